"""Node state: sqlite (WAL) holding desired state and metadata."""
