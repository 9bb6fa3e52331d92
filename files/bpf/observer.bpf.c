/* observer.bpf.c - per-layer timestamps of sampled TCP packets (the `tracepoint` hook profile).
 *
 * What: for every sampled packet of the selected flows, the time it crossed each layer of this
 * host - app -> TCP -> IP -> (device, qdisc)* on the way out, (device)* -> TCP -> copy -> app on
 * the way in - with the device and network namespace of every device hop, so a container's veth,
 * its host's bridge and the host NIC appear as separate hops. One complete record per packet per
 * direction goes to user space through a ring buffer.
 *
 * How: a packet is identified by its flow and a sample key, the first multiple of the sample size
 * in its byte range (pure ACKs: the last sampled byte they acknowledge), so every host samples the
 * same bytes with no coordination, whatever TSO/GSO/GRO did. An LRU hash keyed by (flow, key, kind)
 * accumulates stamps; the first hook of the host creates the entry (a socket hook: TX; a receive on
 * an uplink device: RX), later hooks append, and the record is complete at the uplink's driver
 * (TX), at the application's read (RX data) or at TCP receive (RX ack). Hooks:
 *   raw_tp tcp_sendmsg_locked      app_send   (sk, write_seq, bytes left in the message)
 *   sock_ops HDR_OPT_LEN_CB        tcp_xmit   (inside __tcp_transmit_skb; kept per socket until
 *                                              the same skb reaches IP output, which has its seq)
 *   cgroup_skb egress              ip_out
 *   raw_tp net_dev_queue           dev_queue  } per device: skb->dev gives ifindex and netns
 *   raw_tp qdisc_enqueue/dequeue   qdisc_*    }
 *   raw_tp net_dev_start_xmit      dev_xmit   }
 *   raw_tp netif_rx_entry, napi_gro_receive_entry, netif_receive_skb_entry   dev_rx
 *   raw_tp netif_receive_skb       netif_rx
 *   cgroup_skb ingress             tcp_rx
 *   raw_tp skb_copy_datagram_iovec app_copy   (sk->copied_seq and the copy length)
 *   raw_tp sock_recv_length        app_recv   (the bytes just read end at sk->copied_seq)
 * Kernel struct fields are read at offsets resolved from BTF at start-up (-DOFF_* macros), never
 * through header layouts. Settings come from the config map, so a session never recompiles.
 * Every loss is counted in ls_counters (latscope.h LS_C_*).
 *
 * Cost (bench/overhead.py measures it per hook): every hook runs for every packet of the machine, so
 * the common path is short and the test that rejects most packets comes first - does the packet (or
 * the bytes a socket hook sees) hold a sampled byte at all (has_key) - before the device, namespace or
 * socket addresses are read; neighbouring kernel fields are fetched with one bpf_probe_read_kernel of
 * their span (LS_SKB_*, LS_DEV_*, LS_SK_* below) instead of one call each; the IP and TCP headers are
 * fetched together; the tcp_xmit stamp waits in socket storage (no hash, no delete); a device's uplink
 * flag is only looked up by the hooks that use it.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/in.h>
#include <uapi/linux/if_ether.h>
#include "latscope.h"

#ifndef LS_MAX_ENTRIES
#define LS_MAX_ENTRIES 65536
#endif
#ifndef LS_RINGBUF_PAGES
#define LS_RINGBUF_PAGES 256
#endif
#ifndef LS_MAX_KEYS
#define LS_MAX_KEYS 4
#endif
#define LS_SEQ_SPACE (1ULL << 32)

BPF_ARRAY(ls_config, struct ls_config, 1);
BPF_HASH(ls_scope, __u64, __u8, 64);             /* netns cookies this collector observes */
BPF_HASH(ls_uplinks, struct ls_dev, __u8, 64);   /* (netns, ifindex) where a TX record ends */
BPF_HASH(ls_ports, __u16, __u8, 64);             /* sampling.ports */
BPF_TABLE("lru_hash", struct ls_key, struct ls_event, ls_entries, LS_MAX_ENTRIES);
BPF_TABLE("lru_hash", struct ls_key, __u64, ls_done, LS_MAX_ENTRIES);
BPF_SK_STORAGE(ls_xmit, __u64);                   /* per socket: tcp_xmit time, until ip_out (0: none) */
BPF_PERCPU_ARRAY(ls_counters, __u64, LS_C_COUNT);
BPF_PERCPU_ARRAY(ls_scratch, struct ls_event, 1);
BPF_RINGBUF_OUTPUT(ls_events, LS_RINGBUF_PAGES);

struct ls_pkt {
    __u32 saddr, daddr;
    __u16 sport, dport;
    __u32 seq, ack;
    __u32 payload;
    __u8 flags;     /* TCP flags byte */
};

static __always_inline void count(__u32 which)
{
    __u64 *value = ls_counters.lookup(&which);
    if (value)
        *value += 1;
}

#define LS_READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

/* Spans: fields near each other fetched with one read into a buffer, then picked out of it.
 * LO/HI are compile-time constants from the -DOFF_* macros; a span wider than LS_SPAN_MAX on
 * some kernel falls back to one read per field (the #if below each span). */
#define LS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LS_MAX(a, b) ((a) > (b) ? (a) : (b))
#define LS_SPAN_MAX 128
#define LS_PICK(dst, buf, lo, off) __builtin_memcpy(&(dst), (__u8 *)(buf) + ((off) - (lo)), sizeof(dst))

/* sk_buff: len, network_header, head, data */
#define LS_SKB_LO LS_MIN(LS_MIN(OFF_SKB_LEN, OFF_SKB_NETWORK_HEADER), LS_MIN(OFF_SKB_HEAD, OFF_SKB_DATA))
#define LS_SKB_HI LS_MAX(LS_MAX(OFF_SKB_LEN + 4, OFF_SKB_NETWORK_HEADER + 2), LS_MAX(OFF_SKB_HEAD + 8, OFF_SKB_DATA + 8))
/* net_device: nd_net, ifindex */
#define LS_DEV_LO LS_MIN(OFF_DEV_NET, OFF_DEV_IFINDEX)
#define LS_DEV_HI LS_MAX(OFF_DEV_NET + 8, OFF_DEV_IFINDEX + 4)
/* sock_common: addresses, ports, family, net */
#define LS_SK_LO LS_MIN(LS_MIN(LS_MIN(OFF_SK_FAMILY, OFF_SK_RCV_SADDR), LS_MIN(OFF_SK_DADDR, OFF_SK_NUM)), \
                        LS_MIN(OFF_SK_DPORT, OFF_SK_NET))
#define LS_SK_HI LS_MAX(LS_MAX(LS_MAX(OFF_SK_FAMILY + 2, OFF_SK_RCV_SADDR + 4), LS_MAX(OFF_SK_DADDR + 4, OFF_SK_NUM + 2)), \
                        LS_MAX(OFF_SK_DPORT + 2, OFF_SK_NET + 8))

static __always_inline struct ls_config *config(void)
{
    __u32 zero = 0;
    struct ls_config *cfg = ls_config.lookup(&zero);
    if (!cfg || !cfg->enabled || !cfg->sample_size)
        return 0;
    return cfg;
}

static __always_inline int in_scope(__u64 netns)
{
    return ls_scope.lookup(&netns) != 0;
}

static __always_inline int port_ok(struct ls_config *cfg, __u16 port)
{
    return cfg->any_port || ls_ports.lookup(&port) != 0;
}

/* The flow filter matches either direction of a flow. */
static __always_inline int selected(struct ls_config *cfg, struct ls_pkt *p)
{
    int fwd = ((p->saddr & cfg->src_mask) == cfg->src_net) && ((p->daddr & cfg->dst_mask) == cfg->dst_net) &&
              (!cfg->sport || cfg->sport == p->sport) && (!cfg->dport || cfg->dport == p->dport);
    int rev = ((p->daddr & cfg->src_mask) == cfg->src_net) && ((p->saddr & cfg->dst_mask) == cfg->dst_net) &&
              (!cfg->sport || cfg->sport == p->dport) && (!cfg->dport || cfg->dport == p->sport);
    if (!fwd && !rev)
        return 0;
    return port_ok(cfg, p->sport) || port_ok(cfg, p->dport);
}

struct ls_hdrs {
    struct iphdr ip;
    struct tcphdr tcp;      /* where it is when the IP header has no options (ihl 5) */
};

static __always_inline void fill_pkt(struct iphdr *ip, struct tcphdr *tcp, __u32 ihl, __u32 avail, struct ls_pkt *p)
{
    __u32 hdr = ihl + tcp->doff * 4;
    p->saddr = ip->saddr;
    p->daddr = ip->daddr;
    p->sport = bpf_ntohs(tcp->source);
    p->dport = bpf_ntohs(tcp->dest);
    p->seq = bpf_ntohl(tcp->seq);
    p->ack = bpf_ntohl(tcp->ack_seq);
    p->flags = ((__u8 *)tcp)[13];
    p->payload = avail > hdr ? avail - hdr : 0;
}

/* Parse IPv4 + TCP from kernel memory at l3 (`avail` bytes from l3 belong to the packet):
 * both headers in one read, a second one only for an IP header with options. */
static __always_inline int parse_kernel(void *l3, __u32 avail, struct ls_pkt *p)
{
    struct ls_hdrs h;
    if (avail < sizeof(h.ip) || bpf_probe_read_kernel(&h, sizeof(h), l3))
        return -1;
    if (h.ip.version != 4 || h.ip.protocol != IPPROTO_TCP)
        return 1;
    __u32 ihl = h.ip.ihl * 4;
    if (ihl < sizeof(h.ip))
        return -1;
    if (ihl != sizeof(h.ip) && bpf_probe_read_kernel(&h.tcp, sizeof(h.tcp), l3 + ihl))
        return -1;
    fill_pkt(&h.ip, &h.tcp, ihl, avail, p);
    return 0;
}

/* The same from a cgroup_skb context (offset 0 is the IP header). */
static __always_inline int parse_skb_ctx(struct __sk_buff *skb, struct ls_pkt *p)
{
    struct ls_hdrs h;
    /* one load for both headers; a packet shorter than that (not a TCP one) takes the slow way */
    if (bpf_skb_load_bytes(skb, 0, &h, sizeof(h)) && bpf_skb_load_bytes(skb, 0, &h.ip, sizeof(h.ip)))
        return -1;
    if (h.ip.version != 4 || h.ip.protocol != IPPROTO_TCP)
        return 1;
    __u32 ihl = h.ip.ihl * 4;
    if (ihl < sizeof(h.ip))
        return -1;
    if (ihl != sizeof(h.ip) && bpf_skb_load_bytes(skb, ihl, &h.tcp, sizeof(h.tcp)))
        return -1;
    fill_pkt(&h.ip, &h.tcp, ihl, skb->len, p);
    return 0;
}

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

static __always_inline int pure_ack(struct ls_pkt *p)
{
    return p->payload == 0 && (p->flags & TCPF_ACK) && !(p->flags & (TCPF_SYN | TCPF_FIN | TCPF_RST));
}

/* The last sampled byte an ACK acknowledges (records.ack_key). */
static __always_inline __u32 ack_key(__u32 ack, __u32 size)
{
    __u32 pos = ack - 1;
    return pos - pos % size;
}

/* Append a stamp to an entry, once per (layer, device); complete it when `finish`. */
static __always_inline void emit(struct ls_key *k, struct ls_event *e)
{
    /* Two CPUs can complete the same entry at once (the same key on two packets): one wins. */
    if (__sync_val_compare_and_swap(&e->claimed, 0, 1) != 0)
        return;
    __u64 now = e->stamps[0].ts;
    if (ls_events.ringbuf_output(e, sizeof(*e), 0))
        count(LS_C_RINGBUF_FULL);
    else
        count(LS_C_EMITTED);
    ls_done.update(k, &now);
    ls_entries.delete(k);
}

static __always_inline void add_stamp(struct ls_event *e, __u8 layer, __u64 ts, __u64 netns, __u32 ifindex)
{
    __u32 n = e->nstamps;
    for (int i = 0; i < LS_MAX_STAMPS; i++) {
        if (i >= n)
            break;
        if (e->stamps[i].layer == layer && e->stamps[i].ifindex == ifindex && e->stamps[i].netns == netns)
            return;
    }
    if (n >= LS_MAX_STAMPS) {
        e->flags |= LS_F_TRUNCATED;
        count(LS_C_STAMPS_OVERFLOW);
        return;
    }
    e->stamps[n & (LS_MAX_STAMPS - 1)].ts = ts;
    e->stamps[n & (LS_MAX_STAMPS - 1)].netns = netns;
    e->stamps[n & (LS_MAX_STAMPS - 1)].ifindex = ifindex;
    e->stamps[n & (LS_MAX_STAMPS - 1)].layer = layer;
    e->nstamps = n + 1;
}

#define MODE_APPEND 0   /* only stamp an entry that exists */
#define MODE_CREATE 1   /* start the entry if it does not exist (first hook of the host) */

/* Stamp the sample (flow, key, kind); returns the entry or 0. */
static __always_inline struct ls_event *stamp(struct ls_config *cfg, struct ls_pkt *p, __u32 key, __u8 kind,
                                              __u8 mode, __u8 dir, __u8 layer, __u64 ts, __u64 netns,
                                              __u32 ifindex)
{
    struct ls_key k = {};
    k.saddr = p->saddr;
    k.daddr = p->daddr;
    k.sport = p->sport;
    k.dport = p->dport;
    k.key = key;
    k.kind = kind;
    struct ls_event *e = ls_entries.lookup(&k);
    if (!e) {
        if (mode != MODE_CREATE)
            return 0;
        __u8 flags = 0;
        __u64 *done = ls_done.lookup(&k);
        if (done) {
            if (ts - *done < cfg->repeat_window_ns) {
                count(LS_C_REPEATS_SKIPPED);
                return 0;
            }
            flags = LS_F_REPEAT;
        }
        __u32 zero = 0;
        struct ls_event *fresh = ls_scratch.lookup(&zero);
        if (!fresh)
            return 0;
        __builtin_memset(fresh, 0, sizeof(*fresh));
        fresh->saddr = p->saddr;
        fresh->daddr = p->daddr;
        fresh->sport = p->sport;
        fresh->dport = p->dport;
        fresh->key = key;
        fresh->seq = kind == LS_KIND_ACK ? p->ack : p->seq;
        fresh->len = p->payload;
        fresh->dir = dir;
        fresh->kind = kind;
        fresh->flags = flags;
        if (ls_entries.update(&k, fresh)) {
            count(LS_C_MAP_FULL);
            return 0;
        }
        count(LS_C_CREATED);
        e = ls_entries.lookup(&k);
        if (!e)
            return 0;
    }
    add_stamp(e, layer, ts, netns, ifindex);
    return e;
}

/* Does the packet touch a sample at all: a pure ACK (always keyed), or data holding a multiple
 * of the sample size. The cheap test that lets most packets leave before any map is touched. */
static __always_inline int has_key(struct ls_config *cfg, struct ls_pkt *p)
{
    if (pure_ack(p))
        return 1;
    if (!p->payload)
        return 0;
    __u32 size = cfg->sample_size;
    __u32 into = p->seq % size;                 /* bytes since the last multiple (wraps like the C below) */
    return into == 0 || p->payload > size - into || p->seq + p->payload < p->seq;
}

/* Stamp every sampled byte of a data segment [seq, seq + len), and the ACK key of a pure ACK.
 * `finish` completes entries of direction `finish_dir` (the second-to-last argument). */
static __always_inline void stamp_packet(struct ls_config *cfg, struct ls_pkt *p, __u8 mode, __u8 dir,
                                         __u8 layer, __u64 ts, __u64 netns, __u32 ifindex, int finish,
                                         __u8 finish_kind_mask)
{
    __u32 size = cfg->sample_size;
    if (pure_ack(p)) {
        struct ls_key k = {};
        struct ls_event *e = stamp(cfg, p, ack_key(p->ack, size), LS_KIND_ACK, mode, dir, layer, ts, netns, ifindex);
        if (e && finish && (finish_kind_mask & 2) && e->dir == dir) {
            k.saddr = p->saddr; k.daddr = p->daddr; k.sport = p->sport; k.dport = p->dport;
            k.key = e->key; k.kind = LS_KIND_ACK;
            emit(&k, e);
        }
        return;
    }
    if (!p->payload)
        return;
    __u64 lo = p->seq;
    __u64 hi = lo + p->payload;
    __u64 pos = ((lo + size - 1) / size) * size;
    if (pos >= LS_SEQ_SPACE)
        pos = 0;  /* past the wrap the multiples start again at 0 */
    __u64 wrap_hi = hi > LS_SEQ_SPACE ? hi - LS_SEQ_SPACE : 0;
#pragma unroll
    for (int i = 0; i < LS_MAX_KEYS; i++) {
        int inside = (pos >= lo && pos < hi && pos < LS_SEQ_SPACE) || (pos < wrap_hi);
        if (!inside)
            return;
        struct ls_event *e = stamp(cfg, p, (__u32)pos, LS_KIND_DATA, mode, dir, layer, ts, netns, ifindex);
        if (e && finish && (finish_kind_mask & 1) && e->dir == dir) {
            struct ls_key k = {};
            k.saddr = p->saddr; k.daddr = p->daddr; k.sport = p->sport; k.dport = p->dport;
            k.key = (__u32)pos; k.kind = LS_KIND_DATA;
            emit(&k, e);
        }
        pos += size;
        if (pos >= LS_SEQ_SPACE && pos - LS_SEQ_SPACE >= wrap_hi)
            return;
        if (pos >= LS_SEQ_SPACE)
            pos = 0;
    }
    count(LS_C_KEYS_TRUNCATED);
}

/* ---- device hooks: kernel skb pointers ---------------------------------------------------- */

static __always_inline int skb_device(void *skb, __u64 *netns, __u32 *ifindex)
{
    void *dev = 0, *net = 0;
    if (LS_READ(dev, skb, OFF_SKB_DEV) || !dev)
        return -1;
#if LS_DEV_HI - LS_DEV_LO <= LS_SPAN_MAX
    __u64 span[(LS_DEV_HI - LS_DEV_LO + 7) / 8];
    if (bpf_probe_read_kernel(span, LS_DEV_HI - LS_DEV_LO, dev + LS_DEV_LO))
        return -1;
    LS_PICK(net, span, LS_DEV_LO, OFF_DEV_NET);
    LS_PICK(*ifindex, span, LS_DEV_LO, OFF_DEV_IFINDEX);
#else
    if (LS_READ(net, dev, OFF_DEV_NET) || LS_READ(*ifindex, dev, OFF_DEV_IFINDEX))
        return -1;
#endif
    if (!net || LS_READ(*netns, net, OFF_NET_COOKIE))
        return -1;
    return 0;
}

/* L3 of an outgoing skb: head + network_header; of an incoming one at RX hooks: data. */
static __always_inline int skb_packet(void *skb, int outgoing, struct ls_pkt *p)
{
    void *head = 0, *data = 0, *l3;
    __u32 len = 0;
    __u16 nh = 0;
#if LS_SKB_HI - LS_SKB_LO <= LS_SPAN_MAX
    __u64 span[(LS_SKB_HI - LS_SKB_LO + 7) / 8];
    if (bpf_probe_read_kernel(span, LS_SKB_HI - LS_SKB_LO, skb + LS_SKB_LO))
        return -1;
    LS_PICK(data, span, LS_SKB_LO, OFF_SKB_DATA);
    LS_PICK(len, span, LS_SKB_LO, OFF_SKB_LEN);
    LS_PICK(head, span, LS_SKB_LO, OFF_SKB_HEAD);
    LS_PICK(nh, span, LS_SKB_LO, OFF_SKB_NETWORK_HEADER);
#else
    if (LS_READ(data, skb, OFF_SKB_DATA) || LS_READ(len, skb, OFF_SKB_LEN) ||
        LS_READ(head, skb, OFF_SKB_HEAD) || LS_READ(nh, skb, OFF_SKB_NETWORK_HEADER))
        return -1;
#endif
    if (outgoing) {
        l3 = head + nh;
        __u64 before = (__u64)(l3 - data);
        if (before > 256)
            return -1;
        len = len > before ? len - before : 0;
    } else {
        l3 = data;
    }
    return parse_kernel(l3, len, p);
}

static __always_inline int device_hook(void *skb, int outgoing, __u8 layer, int create, int finish)
{
    struct ls_config *cfg = config();
    if (!cfg || !skb)
        return 0;
    __u64 netns = 0;
    __u32 ifindex = 0;
    /* headers first: most packets hold no sampled byte and leave here, before the device is read */
    struct ls_pkt p = {};
    int rc = skb_packet(skb, outgoing, &p);
    if (rc) {
        if (rc < 0 && !skb_device(skb, &netns, &ifindex) && in_scope(netns))
            count(LS_C_PARSE_FAILED);
        return 0;
    }
    if (!has_key(cfg, &p) || !selected(cfg, &p))
        return 0;
    if (skb_device(skb, &netns, &ifindex) || !in_scope(netns))
        return 0;
    int uplink = 0;
    if (create || finish) {     /* only these hooks care whether the device is an uplink */
        struct ls_dev dev = {};
        dev.netns = netns;
        dev.ifindex = ifindex;
        uplink = ls_uplinks.lookup(&dev) != 0;
    }
    __u64 ts = bpf_ktime_get_ns();
    if (create && uplink)       /* a receive on an uplink starts the host's RX record */
        stamp_packet(cfg, &p, MODE_CREATE, LS_DIR_RX, layer, ts, netns, ifindex, 0, 0);
    else if (finish && uplink)  /* the uplink's driver ends the host's TX record */
        stamp_packet(cfg, &p, MODE_APPEND, LS_DIR_TX, layer, ts, netns, ifindex, 1, 3);
    else
        stamp_packet(cfg, &p, MODE_APPEND, LS_DIR_TX, layer, ts, netns, ifindex, 0, 0);
    return 0;
}

int ls_net_dev_queue(struct bpf_raw_tracepoint_args *ctx)
{
    return device_hook((void *)ctx->args[0], 1, LS_L_DEV_QUEUE, 0, 0);
}

int ls_qdisc_enqueue(struct bpf_raw_tracepoint_args *ctx)
{
    return device_hook((void *)ctx->args[2], 1, LS_L_QDISC_ENQ, 0, 0);
}

int ls_qdisc_dequeue(struct bpf_raw_tracepoint_args *ctx)
{
    return device_hook((void *)ctx->args[3], 1, LS_L_QDISC_DEQ, 0, 0);
}

int ls_net_dev_start_xmit(struct bpf_raw_tracepoint_args *ctx)
{
    return device_hook((void *)ctx->args[0], 1, LS_L_DEV_XMIT, 0, 1);
}

int ls_dev_rx(struct bpf_raw_tracepoint_args *ctx)
{
    return device_hook((void *)ctx->args[0], 0, LS_L_DEV_RX, 1, 0);
}

int ls_netif_receive_skb(struct bpf_raw_tracepoint_args *ctx)
{
    return device_hook((void *)ctx->args[0], 0, LS_L_NETIF_RX, 1, 0);
}

/* ---- socket hooks ---------------------------------------------------------------------------- */

/* The wire flow of data this socket sends (out=1) or receives (out=0), and its netns cookie. */
static __always_inline int sock_flow(void *sk, int out, struct ls_pkt *p, __u64 *netns)
{
    __u32 local = 0, remote = 0;
    __u16 lport = 0, rport = 0, family = 0;
    void *net = 0;
#if LS_SK_HI - LS_SK_LO <= LS_SPAN_MAX
    __u64 span[(LS_SK_HI - LS_SK_LO + 7) / 8];
    if (bpf_probe_read_kernel(span, LS_SK_HI - LS_SK_LO, sk + LS_SK_LO))
        return -1;
    LS_PICK(family, span, LS_SK_LO, OFF_SK_FAMILY);
    if (family != 2 /* AF_INET */)
        return -1;
    LS_PICK(local, span, LS_SK_LO, OFF_SK_RCV_SADDR);
    LS_PICK(remote, span, LS_SK_LO, OFF_SK_DADDR);
    LS_PICK(lport, span, LS_SK_LO, OFF_SK_NUM);
    LS_PICK(rport, span, LS_SK_LO, OFF_SK_DPORT);
    LS_PICK(net, span, LS_SK_LO, OFF_SK_NET);
#else
    if (LS_READ(family, sk, OFF_SK_FAMILY) || family != 2 /* AF_INET */)
        return -1;
    if (LS_READ(local, sk, OFF_SK_RCV_SADDR) || LS_READ(remote, sk, OFF_SK_DADDR) ||
        LS_READ(lport, sk, OFF_SK_NUM) || LS_READ(rport, sk, OFF_SK_DPORT) || LS_READ(net, sk, OFF_SK_NET))
        return -1;
#endif
    if (!net || LS_READ(*netns, net, OFF_NET_COOKIE))
        return -1;
    rport = bpf_ntohs(rport);
    if (out) {
        p->saddr = local; p->daddr = remote; p->sport = lport; p->dport = rport;
    } else {
        p->saddr = remote; p->daddr = local; p->sport = rport; p->dport = lport;
    }
    p->flags = 0;
    return 0;
}

/* tcp_sendmsg_locked(sk, msg, skb, size_goal): the bytes [write_seq, write_seq + left) enter TCP. */
int ls_tcp_sendmsg_locked(struct bpf_raw_tracepoint_args *ctx)
{
    struct ls_config *cfg = config();
    void *sk = (void *)ctx->args[0], *msg = (void *)ctx->args[1];
    if (!cfg || !sk || !msg)
        return 0;
    struct ls_pkt p = {};
    __u64 netns = 0;
    __u32 write_seq = 0;
    __u64 left = 0;
    if (LS_READ(write_seq, sk, OFF_TP_WRITE_SEQ) || LS_READ(left, msg, OFF_MSG_ITER_COUNT))
        return 0;
    p.seq = write_seq;
    p.payload = left > 0x7fffffff ? 0x7fffffff : (__u32)left;
    p.flags = 0x18; /* PSH|ACK: data, never a pure ACK */
    /* a write holding no sampled byte leaves before the socket's addresses are read */
    if (!has_key(cfg, &p) || sock_flow(sk, 1, &p, &netns) || !in_scope(netns) || !selected(cfg, &p))
        return 0;
    p.flags = 0x18;
    stamp_packet(cfg, &p, MODE_CREATE, LS_DIR_TX, LS_L_APP_SEND, bpf_ktime_get_ns(), netns, 0, 0, 0);
    return 0;
}

/* skb_copy_datagram_iovec(skb, len): bytes [copied_seq, copied_seq + len) go to the application. */
int ls_skb_copy_datagram_iovec(struct bpf_raw_tracepoint_args *ctx)
{
    struct ls_config *cfg = config();
    void *skb = (void *)ctx->args[0], *sk = 0;
    int len = (int)ctx->args[1];
    if (!cfg || !skb || len <= 0 || LS_READ(sk, skb, OFF_SKB_SK) || !sk)
        return 0;
    struct ls_pkt p = {};
    __u64 netns = 0;
    __u32 copied = 0;
    if (LS_READ(copied, sk, OFF_TP_COPIED_SEQ))
        return 0;
    p.seq = copied;
    p.payload = len;
    p.flags = 0x18;
    if (!has_key(cfg, &p) || sock_flow(sk, 0, &p, &netns) || !in_scope(netns) || !selected(cfg, &p))
        return 0;
    p.flags = 0x18;
    stamp_packet(cfg, &p, MODE_APPEND, LS_DIR_RX, LS_L_APP_COPY, bpf_ktime_get_ns(), netns, 0, 0, 0);
    return 0;
}

/* sock_recv_length(sk, ret, flags): the read that returned ret bytes ended at copied_seq. */
int ls_sock_recv_length(struct bpf_raw_tracepoint_args *ctx)
{
    struct ls_config *cfg = config();
    void *sk = (void *)ctx->args[0];
    int ret = (int)ctx->args[1];
    int flags = (int)ctx->args[2];
    if (!cfg || !sk || ret <= 0 || (flags & 2 /* MSG_PEEK */))
        return 0;
    __u16 protocol = 0;
    if (LS_READ(protocol, sk, OFF_SK_PROTOCOL) || protocol != IPPROTO_TCP)
        return 0;
    struct ls_pkt p = {};
    __u64 netns = 0;
    __u32 copied = 0;
    if (LS_READ(copied, sk, OFF_TP_COPIED_SEQ))
        return 0;
    p.seq = copied - (__u32)ret;
    p.payload = ret;
    p.flags = 0x18;
    if (!has_key(cfg, &p) || sock_flow(sk, 0, &p, &netns) || !in_scope(netns) || !selected(cfg, &p))
        return 0;
    p.flags = 0x18;
    stamp_packet(cfg, &p, MODE_APPEND, LS_DIR_RX, LS_L_APP_RECV, bpf_ktime_get_ns(), netns, 0, 1, 1);
    return 0;
}

/* ---- sock_ops: the TCP transmit boundary ------------------------------------------------------ */

int ls_sock_ops(struct bpf_sock_ops *ctx)
{
    struct ls_config *cfg = config();
    if (!cfg || ctx->family != 2 /* AF_INET */)
        return 1;
    if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ctx->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
        ctx->op != BPF_SOCK_OPS_HDR_OPT_LEN_CB)
        return 1;
    if (ctx->op == BPF_SOCK_OPS_HDR_OPT_LEN_CB && ctx->skb_len == 0 && ctx->skb_tcp_flags == 0)
        return 1;  /* tcp_current_mss asking with no skb */
    /* Another collector on this kernel may have asked for these callbacks: only our sockets count. */
    if (!in_scope(bpf_get_netns_cookie(ctx)))
        return 1;
    struct ls_pkt p = {};
    p.saddr = ctx->local_ip4;
    p.daddr = ctx->remote_ip4;
    p.sport = ctx->local_port;
    p.dport = bpf_ntohl(ctx->remote_port);
    if (!selected(cfg, &p))
        return 1;
    switch (ctx->op) {
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
        return 1;
    case BPF_SOCK_OPS_HDR_OPT_LEN_CB: {
        struct bpf_sock *sk = ctx->sk;
        if (!sk)
            return 1;
        __u64 *xmit = ls_xmit.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (!xmit) {
            count(LS_C_MAP_FULL);
            return 1;
        }
        if (*xmit)
            count(LS_C_XMIT_UNMATCHED);  /* the previous skb never reached IP output */
        *xmit = bpf_ktime_get_ns();
        return 1;
    }
    }
    return 1;
}

/* ---- cgroup_skb: IP output and TCP receive ------------------------------------------------- */

/* 1 if `skb` is in scope and selected, with its namespace and parsed headers; parse failures counted. */
static __always_inline int our_skb(struct ls_config *cfg, struct __sk_buff *skb, __u64 *netns, struct ls_pkt *p)
{
    *netns = bpf_get_netns_cookie(skb);
    if (!in_scope(*netns))
        return 0;
    int rc = parse_skb_ctx(skb, p);
    if (rc) {
        if (rc < 0)
            count(LS_C_PARSE_FAILED);
        return 0;
    }
    return selected(cfg, p);
}

int ls_cgroup_egress(struct __sk_buff *skb)
{
    struct ls_config *cfg = config();
    __u64 netns = 0;
    struct ls_pkt p = {};
    if (!cfg || !our_skb(cfg, skb, &netns, &p))
        return 1;
    /* the tcp_xmit stamp of this skb (sock_ops) is consumed whether or not the skb holds a sample */
    __u64 xmit_ts = 0;
    struct bpf_sock *sk = skb->sk;
    if (sk)
        sk = bpf_sk_fullsock(sk);
    if (sk) {
        __u64 *xmit = ls_xmit.sk_storage_get(sk, 0, 0);
        if (xmit) {
            xmit_ts = *xmit;
            *xmit = 0;
        }
    }
    if (!has_key(cfg, &p))
        return 1;
    __u64 now = bpf_ktime_get_ns();
    if (xmit_ts)
        stamp_packet(cfg, &p, MODE_CREATE, LS_DIR_TX, LS_L_TCP_XMIT, xmit_ts, netns, 0, 0, 0);
    stamp_packet(cfg, &p, MODE_CREATE, LS_DIR_TX, LS_L_IP_OUT, now, netns, 0, 0, 0);
    return 1;
}

int ls_cgroup_ingress(struct __sk_buff *skb)
{
    struct ls_config *cfg = config();
    __u64 netns = 0;
    struct ls_pkt p = {};
    if (!cfg || !our_skb(cfg, skb, &netns, &p))
        return 1;
    stamp_packet(cfg, &p, MODE_APPEND, LS_DIR_RX, LS_L_TCP_RX, bpf_ktime_get_ns(), netns, 0, 1, 2);
    return 1;
}
