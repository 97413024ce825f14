"""The ``novacron`` command: an RPC client only (it never imports server code)."""
