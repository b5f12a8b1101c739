//! Kubernetes objects (k8s-openapi types) to the dataplane's desired state, the way
//! kube-proxy reads them. Pure: no client, no clock.
