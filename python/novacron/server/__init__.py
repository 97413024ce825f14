"""RPC listeners: the Unix socket (and, later, mutual TLS), one task per connection."""
