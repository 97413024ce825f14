"""The cluster tier: membership, VM ownership and the view of other nodes, in etcd."""
