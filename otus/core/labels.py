"""Labels: flat string key/values that parsers and processors attach to records."""

from __future__ import annotations

__all__ = [
    "LABEL_K8S_DST_NAMESPACE",
    "LABEL_K8S_DST_POD",
    "LABEL_K8S_SRC_NAMESPACE",
    "LABEL_K8S_SRC_POD",
    "LABEL_SIP_CALL_ID",
    "LABEL_SIP_CSEQ_METHOD",
    "LABEL_SIP_FROM_URI",
    "LABEL_SIP_METHOD",
    "LABEL_SIP_STATUS_CODE",
    "LABEL_SIP_TO_URI",
    "Labels",
]

Labels = dict[str, str]

LABEL_SIP_METHOD = "sip.method"  # request method; absent on responses
LABEL_SIP_CALL_ID = "sip.call_id"
LABEL_SIP_FROM_URI = "sip.from_uri"
LABEL_SIP_TO_URI = "sip.to_uri"
LABEL_SIP_STATUS_CODE = "sip.status_code"  # response code as text; absent on requests
LABEL_SIP_CSEQ_METHOD = "sip.cseq_method"  # method a response answers

LABEL_K8S_SRC_POD = "k8s.src_pod"
LABEL_K8S_SRC_NAMESPACE = "k8s.src_namespace"
LABEL_K8S_DST_POD = "k8s.dst_pod"
LABEL_K8S_DST_NAMESPACE = "k8s.dst_namespace"
