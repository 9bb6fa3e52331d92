/* timesync_prober.bpf.c - the manager's side of time synchronisation: t1 and t4 in the kernel.
 *
 * What: the prober (user space) sends UDP probes to every observer's responder; these
 * programs stamp each probe with the manager's bpf_ktime_get_ns() as it leaves through the
 * manager's device (t1, tc egress) and each reply as it arrives at the device (t4, XDP), so
 * neither stamp carries the manager's socket, scheduling or system-call latency.
 *
 * How: ts_egress (tcx egress) recognises an outgoing probe of this prober - IPv4 without
 * options, UDP from the prober's port to the responders' port, TS_PROBE_SIZE bytes, magic,
 * version, kind PROBE and the deployment's token - and writes t1 into it. ts_ingress (XDP)
 * recognises a reply - UDP from the responders' port to the prober's port, kind REPLY, the
 * token - and writes t4 into it; the prober's socket then reads all four stamps. The UDP
 * checksum of probes is 0 (the socket sets SO_NO_CHECK; responders send 0), so writing a
 * stamp needs no checksum update. Every packet passes on unchanged otherwise, counted
 * (ts_counters, timesync.h TS_P_*) when stamped.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>
#include "timesync.h"

BPF_ARRAY(ts_config, struct ts_prober_config, 1);
BPF_PERCPU_ARRAY(ts_counters, __u64, TS_P_COUNT);

#define TS_FRAG_MASK 0x3fff
#define TS_FRAME_SIZE (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr) + TS_PROBE_SIZE)

static __always_inline void count(__u32 which)
{
    __u64 *value = ts_counters.lookup(&which);
    if (value)
        *value += 1;
}

/* The probe in [data, end) if it is one of ours of `kind` going from sport to dport, else 0. */
static __always_inline struct ts_probe *ours(void *data, void *end, struct ts_prober_config *cfg, __u8 kind,
                                             __u16 sport, __u16 dport, int outgoing)
{
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return 0;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
        (ip->frag_off & bpf_htons(TS_FRAG_MASK)))
        return 0;
    if ((outgoing ? ip->saddr : ip->daddr) != cfg->local_addr)
        return 0;
    struct udphdr *udp = (void *)(ip + 1);
    struct ts_probe *probe = (void *)(udp + 1);
    if ((void *)(probe + 1) > end)
        return 0;
    if (udp->source != bpf_htons(sport) || udp->dest != bpf_htons(dport) ||
        udp->len != bpf_htons(sizeof(*udp) + TS_PROBE_SIZE) || probe->magic != TS_LE32(TS_MAGIC) ||
        probe->version != TS_VERSION || probe->kind != kind ||
        probe->token[0] != cfg->token[0] || probe->token[1] != cfg->token[1])
        return 0;
    return probe;
}

int ts_egress(struct __sk_buff *skb)
{
    __u64 now = bpf_ktime_get_ns();
    __u32 zero = 0;
    struct ts_prober_config *cfg = ts_config.lookup(&zero);
    if (!cfg || !cfg->enabled || skb->len < TS_FRAME_SIZE)
        return TC_ACT_UNSPEC;
    if ((long)skb->data_end - (long)skb->data < TS_FRAME_SIZE && bpf_skb_pull_data(skb, TS_FRAME_SIZE))
        return TC_ACT_UNSPEC;
    struct ts_probe *probe = ours((void *)(long)skb->data, (void *)(long)skb->data_end, cfg, TS_KIND_PROBE,
                                  cfg->src_port, cfg->dst_port, 1);
    if (!probe)
        return TC_ACT_UNSPEC;
    probe->t1 = TS_LE64(now);
    probe->flags = TS_LE16(TS_LE16(probe->flags) | TS_F_T1);
    count(TS_P_T1);
    return TC_ACT_UNSPEC;
}

int ts_ingress(struct xdp_md *ctx)
{
    __u64 now = bpf_ktime_get_ns();
    __u32 zero = 0;
    struct ts_prober_config *cfg = ts_config.lookup(&zero);
    if (!cfg || !cfg->enabled)
        return XDP_PASS;
    struct ts_probe *probe = ours((void *)(long)ctx->data, (void *)(long)ctx->data_end, cfg, TS_KIND_REPLY,
                                  cfg->dst_port, cfg->src_port, 0);
    if (!probe)
        return XDP_PASS;
    probe->t4 = TS_LE64(now);
    probe->flags = TS_LE16(TS_LE16(probe->flags) | TS_F_T4);
    count(TS_P_T4);
    return XDP_PASS;
}
