/* latscope.h - what the kernel side and the collector agree on.
 *
 * Fixed-width structs only. The Python twin of every struct here is in
 * plugins/module_utils/records.py (EVENT_HEADER, EVENT_STAMP); change both
 * together. Layer ids are records.LAYERS.
 */
#ifndef LATSCOPE_H
#define LATSCOPE_H

#define LS_MAX_STAMPS 16

/* layers (records.LAYERS) */
#define LS_L_APP_SEND   1
#define LS_L_TCP_XMIT   2
#define LS_L_IP_OUT     3
#define LS_L_DEV_QUEUE  4
#define LS_L_QDISC_ENQ  5
#define LS_L_QDISC_DEQ  6
#define LS_L_DEV_XMIT   7
#define LS_L_DEV_RX     10
#define LS_L_NETIF_RX   11
#define LS_L_TCP_RX     12
#define LS_L_APP_COPY   13
#define LS_L_APP_RECV   14

#define LS_DIR_TX 0
#define LS_DIR_RX 1
#define LS_KIND_DATA 0
#define LS_KIND_ACK  1

/* record flags */
#define LS_F_REPEAT     1   /* the same key was completed before (retransmission or key reuse) */
#define LS_F_TRUNCATED  2   /* more than LS_MAX_STAMPS stamps: the later ones were dropped */

/* drop and event counters (records.COUNTERS, same order) */
#define LS_C_CREATED          0  /* sample entries started */
#define LS_C_EMITTED          1  /* complete records sent to user space */
#define LS_C_RINGBUF_FULL     2  /* complete records lost: ring buffer full */
#define LS_C_MAP_FULL         3  /* entries not started: map update failed */
#define LS_C_KEYS_TRUNCATED   4  /* segments with more sampled bytes than LS_MAX_KEYS (loop exit) */
#define LS_C_STAMPS_OVERFLOW  5  /* stamps dropped: entry already had LS_MAX_STAMPS */
#define LS_C_REPEATS_SKIPPED  6  /* a completed key seen again within the repeat window */
#define LS_C_PARSE_FAILED     7  /* packets whose headers could not be read */
#define LS_C_XMIT_UNMATCHED   8  /* sock_ops transmit stamps with no IP-output packet after them */
#define LS_C_COUNT            9

struct ls_key {
    __u32 saddr;      /* network order, as on the wire */
    __u32 daddr;
    __u16 sport;      /* host order */
    __u16 dport;
    __u32 key;        /* the sampled byte (sequence space) */
    __u8  kind;
    __u8  pad[3];
};

struct ls_dev {
    __u64 netns;
    __u32 ifindex;
    __u32 pad;
};

struct ls_stamp {
    __u64 ts;         /* bpf_ktime_get_ns() */
    __u64 netns;      /* network namespace cookie */
    __u32 ifindex;    /* 0 for socket-level layers */
    __u8  layer;
    __u8  pad[3];
};

/* An entry being filled, and the event sent when it is complete: one struct. */
struct ls_event {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u32 key;
    __u32 seq;        /* sequence (data) or ack number (ack) of the packet that carried the key */
    __u32 len;        /* its payload bytes */
    __u8  dir;
    __u8  kind;
    __u8  nstamps;
    __u8  flags;
    __u32 pad;
    struct ls_stamp stamps[LS_MAX_STAMPS];
    __u64 claimed;    /* set (atomically) by the one hook that completes the entry */
};

/* Settings a session writes into the config map; the programs never need recompiling. */
struct ls_config {
    __u32 enabled;
    __u32 sample_size;      /* sampling.size, bytes */
    __u32 src_net;          /* flow filter, network order; mask 0 = any */
    __u32 src_mask;
    __u32 dst_net;
    __u32 dst_mask;
    __u16 sport;            /* 0 = any */
    __u16 dport;
    __u32 any_port;         /* 1 = sampling.ports is empty */
    __u64 repeat_window_ns;
};

#endif /* LATSCOPE_H */
