"""End-to-end suite (`make e2e`): real kube-apiserver, etcd, helm, Kafka, network namespaces."""
