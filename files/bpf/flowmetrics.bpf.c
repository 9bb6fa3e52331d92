/* flowmetrics.bpf.c - the 16 flow metrics of the MicroBPF seed for every selected TCP flow.
 *
 * What: one entry per IPv4 TCP connection (v4-mapped IPv6 sockets included) of the observed
 * network namespaces that the flow filter selects, holding the socket's congestion state (flight
 * size, peer window, cwnd, MSS), its byte and retransmission counters, the application's
 * send-queue depth and its per-interval maximum, RTT samples, bytes read and written by the
 * application, and when the flow started and ended.
 * The collector reads the whole map every sampling.interval: a time series per flow. Metric
 * definitions: docs/metrics.md; names and units: plugins/module_utils/metrics.py.
 *
 * How: gauges are read from the socket (tcp_sock fields at offsets resolved from BTF at start-up,
 * -DOFF_* macros, never header layouts) whenever something happens to the flow; counters the
 * socket does not keep are kept here. Hooks:
 *   raw_tp tcp_probe (sk, skb)                  every segment received while established: gauges
 *   raw_tp tcp_retransmit_skb (sk, skb, err)    gauges; fast retransmits (icsk_ca_state
 *                                               Disorder/Recovery, TCP_SKB_CB(skb)->tcp_gso_segs)
 *   raw_tp sock_send_length (sk, ret, flags)    write_bytes += ret; gauges
 *   raw_tp sock_recv_length (sk, ret, flags)    read_bytes += ret (not MSG_PEEK); gauges
 *   raw_tp inet_sock_set_state (sk, old, new)   ESTABLISHED starts a flow; CLOSE/TIME_WAIT ends it
 *   sock_ops ACTIVE/PASSIVE_ESTABLISHED_CB      asks for RTT and RTO callbacks (OR-ed into the
 *                                               socket's flags: the observer's stay)
 *   sock_ops RTT_CB                             sample_rtt = args[0] (mrtt, us), sum and count; gauges
 *   sock_ops RTO_CB                             timeouts += 1; gauges
 *   fm_refresh, run by the collector            gauges of every open flow right before each snapshot
 * Only sockets of the namespaces in fm_scope (netns cookie) count. The flow map is a plain hash:
 * when it is full a new flow is not tracked and FM_C_MAP_FULL says so; every failure is counted in
 * fm_counters (flowmetrics.h FM_C_*).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include "flowmetrics.h"

#ifndef FM_MAX_FLOWS
#define FM_MAX_FLOWS 16384
#endif
#define FM_MAX_NAMESPACES 64
#define FM_MAX_PORTS 64

#define FM_AF_INET 2
#define FM_AF_INET6 10
#define FM_EEXIST 17
#define FM_MSG_PEEK 2
#define FM_TCP_ESTABLISHED 1
#define FM_TCP_TIME_WAIT 6
#define FM_TCP_CLOSE 7
#define FM_CA_DISORDER 1
#define FM_CA_RECOVERY 3
#define FM_CB_FLAGS (BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG)
#ifndef FM_RETRANSMIT_HAS_ERR
#define FM_RETRANSMIT_HAS_ERR 1   /* tcp_retransmit_skb(sk, skb, err); before 6.10: (sk, skb), success only */
#endif

BPF_ARRAY(fm_config, struct fm_config, 1);
BPF_HASH(fm_scope, __u64, __u8, FM_MAX_NAMESPACES);   /* netns cookies this collector observes */
BPF_HASH(fm_ports, __u16, __u8, FM_MAX_PORTS);         /* sampling.ports */
BPF_HASH(fm_flows, struct fm_key, struct fm_flow, FM_MAX_FLOWS);
BPF_PERCPU_ARRAY(fm_counters, __u64, FM_C_COUNT);

#define FM_READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

static __always_inline void count(__u32 which)
{
    __u64 *value = fm_counters.lookup(&which);
    if (value)
        *value += 1;
}

static __always_inline struct fm_config *config(void)
{
    __u32 zero = 0;
    struct fm_config *cfg = fm_config.lookup(&zero);
    if (!cfg || !cfg->enabled)
        return 0;
    return cfg;
}

static __always_inline int port_ok(struct fm_config *cfg, __u16 port)
{
    return cfg->any_port || fm_ports.lookup(&port) != 0;
}

/* The flow filter matches either direction of a flow (as the observer's `selected`). */
static __always_inline int selected(struct fm_config *cfg, struct fm_key *k)
{
    int fwd = ((k->saddr & cfg->src_mask) == cfg->src_net) && ((k->daddr & cfg->dst_mask) == cfg->dst_net) &&
              (!cfg->sport || cfg->sport == k->sport) && (!cfg->dport || cfg->dport == k->dport);
    int rev = ((k->daddr & cfg->src_mask) == cfg->src_net) && ((k->saddr & cfg->dst_mask) == cfg->dst_net) &&
              (!cfg->sport || cfg->sport == k->dport) && (!cfg->dport || cfg->dport == k->sport);
    if (!fwd && !rev)
        return 0;
    return port_ok(cfg, k->sport) || port_ok(cfg, k->dport);
}

/* An AF_INET6 socket talking IPv4 (::ffff:a.b.c.d, a dual-stack listener's child): its IPv4
 * addresses are in skc_daddr/skc_rcv_saddr like an AF_INET socket's. */
static __always_inline int v4_mapped(void *sk)
{
    __u32 v6[3] = {};
    if (FM_READ(v6, sk, OFF_SK_V6_DADDR))
        return 0;
    return v6[0] == 0 && v6[1] == 0 && v6[2] == bpf_htonl(0xffff);
}

/* The key of an IPv4 TCP socket; 0 if it is one of ours (in scope and selected). */
static __always_inline int flow_key(struct fm_config *cfg, void *sk, struct fm_key *k)
{
    __u16 family = 0, protocol = 0, sport = 0, dport = 0;
    void *net = 0;
    if (FM_READ(family, sk, OFF_SK_FAMILY) || FM_READ(protocol, sk, OFF_SK_PROTOCOL)) {
        count(FM_C_READ_FAILED);
        return -1;
    }
    if (protocol != IPPROTO_TCP || (family != FM_AF_INET && !(family == FM_AF_INET6 && v4_mapped(sk))))
        return 1;
    if (FM_READ(net, sk, OFF_SK_NET) || !net || FM_READ(k->netns, net, OFF_NET_COOKIE) ||
        FM_READ(k->saddr, sk, OFF_SK_RCV_SADDR) || FM_READ(k->daddr, sk, OFF_SK_DADDR) ||
        FM_READ(sport, sk, OFF_INET_SPORT) || FM_READ(dport, sk, OFF_SK_DPORT)) {
        count(FM_C_READ_FAILED);
        return -1;
    }
    /* inet_sport, not skc_num: tcp_set_state(TCP_CLOSE) zeroes skc_num before the state changes */
    k->sport = bpf_ntohs(sport);
    k->dport = bpf_ntohs(dport);
    if (!fm_scope.lookup(&k->netns) || !selected(cfg, k))
        return 1;
    return 0;
}

/* The flow's entry; created when `create` and absent. */
static __always_inline struct fm_flow *flow_entry(struct fm_key *k, int create, __u64 now)
{
    struct fm_flow *f = fm_flows.lookup(k);
    if (f || !create)
        return f;
    struct fm_flow fresh = {};
    fresh.first_ns = now;
    int rc = fm_flows.insert(k, &fresh);
    if (rc == 0)
        count(FM_C_FLOWS_CREATED);
    else if (rc != -FM_EEXIST) {    /* another CPU may have created it first: that is fine */
        count(FM_C_MAP_FULL);
        return 0;
    }
    f = fm_flows.lookup(k);
    if (!f)
        count(FM_C_LOOKUP_FAILED);
    return f;
}

/* Keep the interval's maximum of the app write queue; a new interval starts from the depth the
 * queue had when it began (the previous reading) so a queue that only drains is not under-reported. */
static __always_inline void note_wqueue(struct fm_flow *f, __u32 depth, __u32 epoch)
{
    __u32 slot = epoch & 1;
    if (f->max_epoch[slot] != epoch) {
        __u32 start = f->app_wqueue > depth ? f->app_wqueue : depth;
        f->max_epoch[slot] = epoch;
        f->max_wqueue[slot] = start;
    } else if (depth > f->max_wqueue[slot]) {
        f->max_wqueue[slot] = depth;
    }
}

/* Read the gauges from the socket. */
static __always_inline void refresh(struct fm_config *cfg, void *sk, struct fm_flow *f, __u64 now)
{
    __u32 cwnd = 0, mss = 0, wnd = 0, out = 0, sacked = 0, lost = 0, retrans = 0, total = 0;
    __u32 write_seq = 0, snd_una = 0;
    __u64 sent = 0, received = 0, acked = 0;
    __u8 state = 0;
    if (FM_READ(cwnd, sk, OFF_TP_SND_CWND) || FM_READ(mss, sk, OFF_TP_MSS_CACHE) || FM_READ(wnd, sk, OFF_TP_SND_WND) ||
        FM_READ(out, sk, OFF_TP_PACKETS_OUT) || FM_READ(sacked, sk, OFF_TP_SACKED_OUT) ||
        FM_READ(lost, sk, OFF_TP_LOST_OUT) || FM_READ(retrans, sk, OFF_TP_RETRANS_OUT) ||
        FM_READ(total, sk, OFF_TP_TOTAL_RETRANS) || FM_READ(write_seq, sk, OFF_TP_WRITE_SEQ) ||
        FM_READ(snd_una, sk, OFF_TP_SND_UNA) || FM_READ(sent, sk, OFF_TP_BYTES_SENT) ||
        FM_READ(received, sk, OFF_TP_BYTES_RECEIVED) || FM_READ(acked, sk, OFF_TP_BYTES_ACKED) ||
        FM_READ(state, sk, OFF_SK_STATE)) {
        count(FM_C_READ_FAILED);
        return;
    }
    __s64 flight = (__s64)out - sacked - lost + retrans;
    __u32 depth = write_seq - snd_una;
    f->flight_size = flight > 0 ? (__u32)flight : 0;
    f->rwnd = wnd;
    f->cwnd = cwnd;
    f->mss = mss;
    f->total_retrans = total;
    f->bytes_sent = sent;
    f->bytes_received = received;
    f->bytes_acked = acked;
    f->state = state;
    note_wqueue(f, depth, cfg->epoch);
    f->app_wqueue = depth;
    f->updated_ns = now;
    f->sk = (__u64)sk;
}

/* An event on socket `sk`: its flow's entry with fresh gauges, or 0 if it is not one of ours. */
static __always_inline struct fm_flow *on_socket(void *sk, int create)
{
    struct fm_config *cfg = config();
    struct fm_key k = {};
    if (!cfg || !sk || flow_key(cfg, sk, &k))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    struct fm_flow *f = flow_entry(&k, create, now);
    if (f)
        refresh(cfg, sk, f, now);
    return f;
}

/* ---- raw tracepoints ------------------------------------------------------------------------- */

int fm_tcp_probe(struct bpf_raw_tracepoint_args *ctx)
{
    on_socket((void *)ctx->args[0], 1);
    return 0;
}

int fm_tcp_retransmit_skb(struct bpf_raw_tracepoint_args *ctx)
{
    void *sk = (void *)ctx->args[0], *skb = (void *)ctx->args[1];
#if FM_RETRANSMIT_HAS_ERR
    int err = (int)ctx->args[2];
#else
    int err = 0;    /* the tracepoint fired for a successful retransmission only */
#endif
    struct fm_flow *f = on_socket(sk, 1);
    if (!f || err || !skb)
        return 0;
    __u32 ca = 0;
    __u16 segs = 0;
    if (FM_READ(ca, sk, CA_STATE_BYTE) || FM_READ(segs, skb, OFF_SKB_CB + OFF_TCB_GSO_SEGS)) {
        count(FM_C_READ_FAILED);
        return 0;
    }
    ca = (ca >> CA_STATE_SHIFT) & CA_STATE_MASK;
    if (ca == FM_CA_DISORDER || ca == FM_CA_RECOVERY)
        __sync_fetch_and_add(&f->fast_retrans, segs ? segs : 1);
    return 0;
}

int fm_sock_send_length(struct bpf_raw_tracepoint_args *ctx)
{
    int ret = (int)ctx->args[1];
    if (ret <= 0)
        return 0;
    struct fm_flow *f = on_socket((void *)ctx->args[0], 1);
    if (f)
        __sync_fetch_and_add(&f->write_bytes, ret);
    return 0;
}

int fm_sock_recv_length(struct bpf_raw_tracepoint_args *ctx)
{
    int ret = (int)ctx->args[1];
    int flags = (int)ctx->args[2];
    if (ret <= 0 || (flags & FM_MSG_PEEK))
        return 0;
    struct fm_flow *f = on_socket((void *)ctx->args[0], 1);
    if (f)
        __sync_fetch_and_add(&f->read_bytes, ret);
    return 0;
}

/* inet_sock_set_state(sk, oldstate, newstate) */
int fm_inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
    struct fm_config *cfg = config();
    void *sk = (void *)ctx->args[0];
    int newstate = (int)ctx->args[2];
    struct fm_key k = {};
    if (!cfg || !sk || flow_key(cfg, sk, &k))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    if (newstate == FM_TCP_ESTABLISHED) {
        /* A new connection, even if an old one with the same ports is still in the map. */
        struct fm_flow fresh = {};
        fresh.first_ns = now;
        fresh.established_ns = now;
        int existed = fm_flows.lookup(&k) != 0;
        if (fm_flows.update(&k, &fresh)) {
            count(FM_C_MAP_FULL);
            return 0;
        }
        if (!existed)
            count(FM_C_FLOWS_CREATED);
        struct fm_flow *f = fm_flows.lookup(&k);
        if (f)
            refresh(cfg, sk, f, now);
        return 0;
    }
    if (newstate != FM_TCP_CLOSE && newstate != FM_TCP_TIME_WAIT)
        return 0;
    struct fm_flow *f = fm_flows.lookup(&k);
    if (!f || f->closed_ns)
        return 0;
    refresh(cfg, sk, f, now);
    f->state = newstate;
    f->closed_ns = now;
    f->sk = 0;          /* the socket is about to be freed: never refresh from it again */
    count(FM_C_FLOWS_CLOSED);
    return 0;
}

/* Run by the collector (BPF_PROG_TEST_RUN, args[0] = a flow's sk) right before it reads the map, so
 * the gauges are the socket's state at the snapshot, not at its last event (tcp_probe runs before
 * TCP handles the segment: without this, the last ACK of a burst would never be seen). Returns 1
 * if it refreshed; a socket that closed or is no longer the flow's is left alone. */
int fm_refresh(struct bpf_raw_tracepoint_args *ctx)
{
    struct fm_config *cfg = config();
    void *sk = (void *)ctx->args[0];
    struct fm_key k = {};
    if (!cfg || !sk || flow_key(cfg, sk, &k))
        return 0;
    struct fm_flow *f = fm_flows.lookup(&k);
    if (!f || f->closed_ns || f->sk != (__u64)sk)
        return 0;
    refresh(cfg, sk, f, bpf_ktime_get_ns());
    return 1;
}

/* ---- sock_ops ---------------------------------------------------------------------------------- */

int fm_sock_ops(struct bpf_sock_ops *ctx)
{
    __u32 op = ctx->op;
    if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
        op != BPF_SOCK_OPS_RTT_CB && op != BPF_SOCK_OPS_RTO_CB)
        return 1;
    if ((ctx->family != FM_AF_INET && ctx->family != FM_AF_INET6) || !ctx->is_fullsock)
        return 1;
    /* The kernel's struct sock: first member of the real context (struct bpf_sock_ops_kern). */
    void *sk = 0;
    if (FM_READ(sk, ctx, OFF_SOCK_OPS_SK) || !sk) {
        count(FM_C_READ_FAILED);
        return 1;
    }
    struct fm_flow *f = on_socket(sk, 1);
    if (!f)
        return 1;
    switch (op) {
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        if (bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | FM_CB_FLAGS))
            count(FM_C_CB_FLAGS_FAILED);
        break;
    case BPF_SOCK_OPS_RTT_CB: {
        __u32 mrtt = ctx->args[0];
        f->sample_rtt_us = mrtt;
        __sync_fetch_and_add(&f->sum_rtt_us, mrtt);
        __sync_fetch_and_add(&f->rtt_samples, 1);
        break;
    }
    case BPF_SOCK_OPS_RTO_CB:
        __sync_fetch_and_add(&f->timeouts, 1);
        break;
    }
    return 1;
}
