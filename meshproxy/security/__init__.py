"""Mesh TLS for the sidecar: SPIFFE identities (``spiffe``), X.509 material
(``x509``), contexts swapped on rotation (``contexts``), the inbound and
outbound handshakes with refusal reasons (``handshake``, ``refusals``), and
the certificate's renewal from the control plane's CA (``identity``).

The data path calls into this room; nothing here imports the data path."""
