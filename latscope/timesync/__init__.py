"""Time synchronisation: the XDP responder on observers, the BPF-stamped prober on the manager."""
