/* timesync.h - what the time-sync prober, the responder and the Python side agree on.
 *
 * Fixed-width structs only. The Python twin of everything here is
 * plugins/module_utils/clock.py (PROBE_FORMAT, RESPONDER_COUNTERS, PROBER_COUNTERS):
 * change both together.
 *
 * The probe is the payload of one UDP datagram, all fields little-endian:
 *
 *   offset size field
 *        0    4 magic    "LSTS"
 *        4    1 version  TS_VERSION
 *        5    1 kind     TS_KIND_PROBE (manager -> observer) or TS_KIND_REPLY (reflected)
 *        6    2 flags    TS_F_*
 *        8   16 token    the deployment's token (a shared secret; compared, never derived)
 *       24    8 id       chosen by the prober, echoed
 *       32    8 t1       manager clock, at the manager's egress device (tc egress)
 *       40    8 t2       observer clock, at the observer's XDP ingress
 *       48    8 t3       observer clock, just before XDP_TX
 *       56    8 t4       manager clock, at the manager's XDP ingress
 *
 * A probe is exactly TS_PROBE_SIZE bytes of UDP payload in an IPv4 packet without options
 * and not fragmented; anything else is not a probe.
 */
#ifndef LATSCOPE_TIMESYNC_H
#define LATSCOPE_TIMESYNC_H

#define TS_MAGIC        0x5354534cU   /* "LSTS" read as a little-endian u32 */
#define TS_VERSION      1
#define TS_KIND_PROBE   1
#define TS_KIND_REPLY   2
#define TS_PROBE_SIZE   64

/* flags */
#define TS_F_T1         1   /* t1 written by the manager's egress program */
#define TS_F_T4         2   /* t4 written by the manager's ingress program */
#define TS_F_INJECTED   4   /* the responder's test knob was on: t2/t3 are not its real clock */

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define TS_LE16(x) __builtin_bswap16(x)
#define TS_LE32(x) __builtin_bswap32(x)
#define TS_LE64(x) __builtin_bswap64(x)
#else
#define TS_LE16(x) (x)
#define TS_LE32(x) (x)
#define TS_LE64(x) (x)
#endif

struct ts_probe {
    __u32 magic;
    __u8  version;
    __u8  kind;
    __u16 flags;
    __u64 token[2];
    __u64 id;
    __u64 t1;
    __u64 t2;
    __u64 t3;
    __u64 t4;
};

/* Responder counters (clock.RESPONDER_COUNTERS, same order). Every packet is counted once. */
#define TS_R_REPLIED        0  /* probes answered (XDP_TX) */
#define TS_R_OTHER          1  /* not IPv4/UDP to the probe port: passed untouched */
#define TS_R_TRUNCATED      2  /* IPv4 frame too short for its headers, or for a probe */
#define TS_R_FRAGMENT       3  /* IPv4 fragments (never probes) */
#define TS_R_MALFORMED      4  /* to the probe port but not a well-formed probe */
#define TS_R_WRONG_SOURCE   5  /* a probe not from the manager's address */
#define TS_R_WRONG_DEST     6  /* a probe not for this host's address, or to a group MAC */
#define TS_R_WRONG_TOKEN    7  /* a probe with another token */
#define TS_R_DISABLED       8  /* a packet to the probe port while the responder is disarmed */
#define TS_R_COUNT          9

/* Prober counters (clock.PROBER_COUNTERS, same order). */
#define TS_P_T1             0  /* probes stamped at egress */
#define TS_P_T4             1  /* replies stamped at ingress */
#define TS_P_COUNT          2

/* Settings the responder reads on every packet; user space writes them (no recompiling). */
struct ts_responder_config {
    __u32 enabled;
    __u32 manager_addr;   /* network order, as on the wire */
    __u32 local_addr;     /* network order */
    __u16 port;           /* host order */
    __u16 pad;
    __u64 token[2];
};

/* Settings of the manager's programs. */
struct ts_prober_config {
    __u32 enabled;
    __u32 local_addr;     /* the manager's address, network order */
    __u16 src_port;       /* the prober socket's port, host order */
    __u16 dst_port;       /* the responders' port, host order */
    __u32 pad;
    __u64 token[2];
};

/* The test knob: observer clock = ktime + offset_ns + (ktime - ref_ns) * skew_ppb / 1e9.
 * Compiled in only with -DTS_TEST_KNOB (tests and the bench), zero by default. */
struct ts_inject {
    __u32 enabled;
    __u32 pad;
    __s64 offset_ns;
    __s64 skew_ppb;
    __u64 ref_ns;
};

#endif /* LATSCOPE_TIMESYNC_H */
