"""MessagePack-RPC: the wire codec (no I/O) and the method dispatcher."""
