{{/*
The sidecar, as a template other charts can use too.  Call it with a dict:
  root: the meshproxy chart's context ($), service: the workload's service name,
  appPort: the port the app listens on, upstreams: the services it calls (a
  list; absent: every service).
"meshproxy.sidecar.container" is the container, "meshproxy.sidecar.bootstrap"
the bootstrap file (put it in a ConfigMap mounted at /etc/meshproxy-template).
The node id is the pod's name, filled in when the container starts.
*/}}

{{- define "meshproxy.sidecar.bootstrap" -}}
{{- $root := .root -}}
node:
  id: __POD_NAME__
  service: {{ .service | quote }}
  {{- if hasKey . "upstreams" }}
  upstreams: {{ .upstreams | toJson }}
  {{- end }}
admin: {address: 0.0.0.0, port: {{ $root.Values.sidecar.adminPort }}}
listeners:
  - {name: outbound, direction: outbound, address: 127.0.0.1, port: {{ $root.Values.sidecar.outboundPort }}}
  - {name: inbound, direction: inbound, address: 0.0.0.0, port: {{ $root.Values.sidecar.inboundPort }}, local_app: "127.0.0.1:{{ .appPort }}"}
control_plane: {url: {{ include "meshproxy.controlPlaneURL" $root | quote }}}
{{- end -}}

{{- define "meshproxy.sidecar.container" -}}
{{- $root := .root -}}
name: meshproxy
image: {{ default (include "meshproxy.image" $root) $root.Values.sidecar.image | quote }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
command: ["/bin/sh", "-c"]
args:
  - sed "s/__POD_NAME__/${POD_NAME}/" /etc/meshproxy-template/config.yaml > /tmp/config.yaml
    && exec meshproxy run --config /tmp/config.yaml
env:
  - name: POD_NAME
    valueFrom: {fieldRef: {fieldPath: metadata.name}}
  - name: MESHPROXY_WORKERS
    value: {{ $root.Values.sidecar.workers | quote }}
ports:
  - {name: mesh-admin, containerPort: {{ $root.Values.sidecar.adminPort }}}
  - {name: mesh-inbound, containerPort: {{ $root.Values.sidecar.inboundPort }}}
readinessProbe:
  httpGet: {path: /ready, port: mesh-admin}
  periodSeconds: 5
resources:
  {{- toYaml $root.Values.sidecar.resources | nindent 2 }}
securityContext: {runAsNonRoot: true, runAsUser: 10001, allowPrivilegeEscalation: false}
volumeMounts:
  - {name: meshproxy-bootstrap, mountPath: /etc/meshproxy-template, readOnly: true}
  - {name: meshproxy-tmp, mountPath: /tmp}
{{- end -}}

{{- define "meshproxy.sidecar.annotations" -}}
{{- $root := .root -}}
{{- if $root.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $root.Values.sidecar.adminPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
