#!/bin/sh
# HAProxy as Ray Serve's high-throughput mode starts it (RAY_SERVE_HAPROXY_BINARY_PATH), with its
# stats page and Prometheus exporter bound to $SEQOPS_HAPROXY_ADMIN_HOST (default 127.0.0.1).
#
# Why a wrapper: Ray's config template binds both on every interface ("bind *:<stats_port>",
# "bind :<metrics_port>") with no setting to change it, and neither asks who is calling. Only
# the bind lines of those two sections are rewritten; the client-facing frontend keeps the host
# Serve was given. Then the real binary ($SEQOPS_HAPROXY_BINARY) runs with the same arguments.
set -eu
config=""
previous=""
for arg in "$@"; do
    if [ "$previous" = "-f" ]; then config="$arg"; fi
    previous="$arg"
done
if [ -n "$config" ] && [ -f "$config" ]; then
    host="${SEQOPS_HAPROXY_ADMIN_HOST:-127.0.0.1}"
    awk -v host="$host" '
        /^[^ \t]/ { admin = ($0 ~ /^listen stats/ || $0 ~ /^frontend prometheus/) }
        admin && $1 == "bind" { n = split($2, part, ":"); sub(/bind[ \t]+[^ \t]+/, "bind " host ":" part[n]) }
        { print }
    ' "$config" > "$config.seqops" && mv "$config.seqops" "$config"
fi
exec "${SEQOPS_HAPROXY_BINARY:?set to the haproxy binary}" "$@"
