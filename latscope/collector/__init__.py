"""The collector daemon: BPF events in, records out, shipped to the manager's database."""
