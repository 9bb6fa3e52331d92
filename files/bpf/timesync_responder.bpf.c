/* timesync_responder.bpf.c - the observer's side of time synchronisation (XDP).
 *
 * What: on the observer's interface, answer the manager's UDP time probes from the driver
 * level. A probe is stamped on arrival (t2) with this host's bpf_ktime_get_ns(), reflected
 * to its sender with XDP_TX, and stamped again (t3) just before it leaves, so the manager
 * measures this host's clock against its own with nothing of the host's stack in between.
 *
 * How: a packet is a probe only if it is an unfragmented IPv4/UDP packet without options,
 * to the configured port, exactly TS_PROBE_SIZE bytes of payload of the right magic, version
 * and kind, to this host's address and a unicast MAC, from the manager's address, carrying the
 * deployment's token (timesync.h). Only then is it rewritten (MACs, addresses and ports
 * swapped, UDP checksum 0, kind REPLY, t2 and t3) and sent back. Every other packet - other
 * traffic, and every truncated, fragmented, malformed, wrong-source, wrong-destination or
 * wrong-token packet to the port - is passed to the stack untouched and counted once
 * (ts_counters, timesync.h TS_R_*). Settings come from ts_config, written by user space.
 *
 * On veth, XDP_TX hands the frame to the peer device's XDP receive queue: the peer needs an
 * XDP program of its own (ts_pass, XDP_PASS) or its frames are dropped (see docs/timesync.md).
 *
 * With -DTS_TEST_KNOB the stamps go through ts_inject (a known offset and skew, for tests);
 * a deployed responder is compiled without it and marks no reply TS_F_INJECTED.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/in.h>
#include "timesync.h"

BPF_ARRAY(ts_config, struct ts_responder_config, 1);
BPF_PERCPU_ARRAY(ts_counters, __u64, TS_R_COUNT);
#ifdef TS_TEST_KNOB
BPF_ARRAY(ts_inject, struct ts_inject, 1);
#endif

#define TS_NS 1000000000ULL
#define TS_FRAG_MASK 0x3fff   /* MF flag and fragment offset */

static __always_inline int verdict(__u32 which)
{
    __u64 *value = ts_counters.lookup(&which);
    if (value)
        *value += 1;
    return XDP_PASS;
}

/* This host's clock: ktime, or ktime through the test knob. */
static __always_inline __u64 observer_clock(__u64 now, __u16 *flags)
{
#ifdef TS_TEST_KNOB
    __u32 zero = 0;
    struct ts_inject *inj = ts_inject.lookup(&zero);
    if (inj && inj->enabled) {
        __u64 dt = now >= inj->ref_ns ? now - inj->ref_ns : inj->ref_ns - now;
        __u64 skew = inj->skew_ppb >= 0 ? inj->skew_ppb : -inj->skew_ppb;
        /* |dt * skew| / 1e9 without overflow, rounded down */
        __u64 drift = (dt / TS_NS) * skew + ((dt % TS_NS) * skew) / TS_NS;
        int negative = (now < inj->ref_ns) != (inj->skew_ppb < 0);
        *flags |= TS_F_INJECTED;
        return now + inj->offset_ns + (negative ? -(__s64)drift : (__s64)drift);
    }
#endif
    return now;
}

int ts_respond(struct xdp_md *ctx)
{
    __u64 arrival = bpf_ktime_get_ns();
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;

    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return verdict(TS_R_OTHER);
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end)
        return verdict(TS_R_TRUNCATED);
    if (ip->protocol != IPPROTO_UDP)
        return verdict(TS_R_OTHER);
    if (ip->frag_off & bpf_htons(TS_FRAG_MASK))
        return verdict(TS_R_FRAGMENT);
    __u32 ihl = ip->ihl * 4;
    if (ihl < sizeof(*ip))
        return verdict(TS_R_MALFORMED);
    struct udphdr *udp = (void *)ip + ihl;
    if ((void *)(udp + 1) > end)
        return verdict(TS_R_TRUNCATED);

    __u32 zero = 0;
    struct ts_responder_config *cfg = ts_config.lookup(&zero);
    if (!cfg || udp->dest != bpf_htons(cfg->port))
        return verdict(TS_R_OTHER);
    if (!cfg->enabled)
        return verdict(TS_R_DISABLED);
    if (ip->version != 4 || ihl != sizeof(*ip))
        return verdict(TS_R_MALFORMED);
    struct ts_probe *probe = (void *)(udp + 1);
    if ((void *)(probe + 1) > end)
        return verdict(TS_R_TRUNCATED);
    if (udp->len != bpf_htons(sizeof(*udp) + TS_PROBE_SIZE) ||
        ip->tot_len != bpf_htons(sizeof(*ip) + sizeof(*udp) + TS_PROBE_SIZE) ||
        probe->magic != TS_LE32(TS_MAGIC) || probe->version != TS_VERSION || probe->kind != TS_KIND_PROBE)
        return verdict(TS_R_MALFORMED);
    if (ip->saddr != cfg->manager_addr)
        return verdict(TS_R_WRONG_SOURCE);
    if (ip->daddr != cfg->local_addr || (eth->h_dest[0] & 1))
        return verdict(TS_R_WRONG_DEST);
    if (probe->token[0] != cfg->token[0] || probe->token[1] != cfg->token[1])
        return verdict(TS_R_WRONG_TOKEN);

    /* A probe for us: reflect it. The IP checksum is unchanged by swapping the addresses. */
    __u16 flags = TS_LE16(probe->flags);
    __u64 t2 = observer_clock(arrival, &flags);
    __u8 mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac, ETH_ALEN);
    __u32 addr = ip->saddr;
    ip->saddr = ip->daddr;
    ip->daddr = addr;
    __u16 port = udp->source;
    udp->source = udp->dest;
    udp->dest = port;
    udp->check = 0;
    probe->kind = TS_KIND_REPLY;
    probe->t2 = TS_LE64(t2);
    verdict(TS_R_REPLIED);
    probe->t3 = TS_LE64(observer_clock(bpf_ktime_get_ns(), &flags));
    probe->flags = TS_LE16(flags);
    return XDP_TX;
}

/* For the veth peer of the responder's interface: accept the reflected frames, pass them on. */
int ts_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}
