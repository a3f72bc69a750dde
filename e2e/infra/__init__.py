"""Real e2e infrastructure: built tools (helm, kube-apiserver, kubectl, etcd), a control plane."""
