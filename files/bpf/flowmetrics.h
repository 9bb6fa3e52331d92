/* flowmetrics.h - what files/bpf/flowmetrics.bpf.c and latscope/collector/flowmetrics.py agree on.
 *
 * Fixed-width structs only. The collector reads them through the ctypes types BCC builds from the
 * maps, by field name; the counter ids are plugins/module_utils/metrics.py COUNTERS (same order).
 */
#ifndef LATSCOPE_FLOWMETRICS_H
#define LATSCOPE_FLOWMETRICS_H

/* failure and event counters (metrics.COUNTERS, same order) */
#define FM_C_FLOWS_CREATED    0  /* flow entries started */
#define FM_C_MAP_FULL         1  /* flows not tracked: the flow map was full (update failed) */
#define FM_C_READ_FAILED      2  /* events dropped: a kernel field could not be read */
#define FM_C_LOOKUP_FAILED    3  /* entry vanished between insert and lookup (deleted by the collector) */
#define FM_C_CB_FLAGS_FAILED  4  /* bpf_sock_ops_cb_flags_set refused our callbacks */
#define FM_C_FLOWS_CLOSED     5  /* flows seen reaching CLOSE or TIME_WAIT */
#define FM_C_COUNT            6

/* A flow as this host's socket sees it: source = local end. */
struct fm_key {
    __u64 netns;       /* network namespace cookie */
    __u32 saddr;       /* local address, network order */
    __u32 daddr;       /* remote address, network order */
    __u16 sport;       /* local port, host order */
    __u16 dport;       /* remote port, host order */
    __u32 pad;
};

struct fm_flow {
    __u64 first_ns;          /* bpf_ktime_get_ns() when the entry was created */
    __u64 established_ns;    /* when the connection reached ESTABLISHED (0: before we attached) */
    __u64 updated_ns;        /* last time the gauges below were read from the socket */
    __u64 closed_ns;         /* when it reached CLOSE/TIME_WAIT, 0 while open */
    __u64 sk;                /* the kernel socket, for fm_refresh (0 once closed) */
    /* gauges: the socket's state at updated_ns */
    __u64 bytes_sent;        /* tcp_sock.bytes_sent (retransmissions included) */
    __u64 bytes_received;    /* tcp_sock.bytes_received */
    __u64 bytes_acked;       /* tcp_sock.bytes_acked */
    __u32 flight_size;       /* packets_out - sacked_out - lost_out + retrans_out (packets) */
    __u32 rwnd;              /* snd_wnd: the peer's advertised window, bytes */
    __u32 cwnd;              /* snd_cwnd, packets */
    __u32 mss;               /* mss_cache, bytes */
    __u32 total_retrans;     /* tcp_sock.total_retrans, segments */
    __u32 app_wqueue;        /* write_seq - snd_una: bytes written by the app, not yet acked */
    __u32 state;             /* TCP state (TCP_ESTABLISHED = 1 ...) */
    __u32 sample_rtt_us;     /* the latest RTT sample (sock_ops RTT_CB mrtt) */
    /* counters kept here */
    __u64 fast_retrans;      /* segments retransmitted in Disorder or Recovery */
    __u64 timeouts;          /* RTO expirations (sock_ops RTO_CB) */
    __u64 rtt_samples;       /* RTT_CB calls */
    __u64 sum_rtt_us;        /* sum of their mrtt */
    __u64 read_bytes;        /* sum of recv() returns (sock_recv_length, no MSG_PEEK) */
    __u64 write_bytes;       /* sum of send() returns (sock_send_length) */
    /* per-interval maximum of app_wqueue: slot epoch & 1 belongs to interval `epoch` */
    __u32 max_wqueue[2];
    __u32 max_epoch[2];
};

/* Settings a session writes into the config map; the programs never need recompiling. */
struct fm_config {
    __u32 enabled;
    __u32 epoch;            /* interval number: the collector bumps it at every snapshot */
    __u32 src_net;          /* flow filter, network order; mask 0 = any */
    __u32 src_mask;
    __u32 dst_net;
    __u32 dst_mask;
    __u16 sport;            /* 0 = any */
    __u16 dport;
    __u32 any_port;         /* 1 = sampling.ports is empty */
};

#endif /* LATSCOPE_FLOWMETRICS_H */
