#!/bin/sh
# Render alertmanager.yml.in into a real Alertmanager config from environment variables.
#
# Why: Alertmanager does not expand environment variables in its config file, but SMTP
# credentials and the Slack URL must not live in git. This script (POSIX sh + awk, so it
# runs inside the busybox-based prom/alertmanager image as its entrypoint, and on any
# host) substitutes ${NAME} for the variables listed below, keeps the "# >>> email" block
# only when SMTP_SMARTHOST and ALERT_EMAIL_TO are set and the "# >>> slack" block only when
# SLACK_WEBHOOK_URL is set, then optionally execs the command after "--".
#
#   render-config.sh TEMPLATE OUTPUT [-- alertmanager --config.file=OUTPUT ...]
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 TEMPLATE OUTPUT [-- COMMAND ...]" >&2
    exit 2
fi
template=$1
output=$2
shift 2

: "${ALERT_WEBHOOK_URL:=http://alerts-webhook:5001/alerts}"
: "${ALERT_EMAIL_TO:=}"
: "${ALERT_EMAIL_FROM:=alertmanager@labotel.local}"
: "${SMTP_SMARTHOST:=}"
: "${SMTP_USERNAME:=}"
: "${SMTP_PASSWORD:=}"
: "${SMTP_REQUIRE_TLS:=true}"
: "${SLACK_WEBHOOK_URL:=}"
: "${SLACK_CHANNEL:=#alerts}"
: "${ALERTMANAGER_TEMPLATES:=/etc/alertmanager/templates}"
export ALERT_WEBHOOK_URL ALERT_EMAIL_TO ALERT_EMAIL_FROM SMTP_SMARTHOST SMTP_USERNAME \
    SMTP_PASSWORD SMTP_REQUIRE_TLS SLACK_WEBHOOK_URL SLACK_CHANNEL ALERTMANAGER_TEMPLATES

case $SMTP_REQUIRE_TLS in
    true|false) ;;
    *) echo "render-config: SMTP_REQUIRE_TLS must be true or false, got '$SMTP_REQUIRE_TLS'" >&2
       exit 1 ;;
esac
if [ -n "$SMTP_SMARTHOST" ] && [ -z "$ALERT_EMAIL_TO" ]; then
    echo "render-config: SMTP_SMARTHOST is set but ALERT_EMAIL_TO is empty: who gets the mail?" >&2
    exit 1
fi

email=no
if [ -n "$SMTP_SMARTHOST" ] && [ -n "$ALERT_EMAIL_TO" ]; then email=yes; fi
slack=no
if [ -n "$SLACK_WEBHOOK_URL" ]; then slack=yes; fi

umask 077  # the rendered file may hold the SMTP password and the Slack URL
awk -v email="$email" -v slack="$slack" '
    # Escape a value for a double-quoted YAML scalar; refuse line breaks (no injection).
    function quote(name, value,    out, i, c) {
        if (value ~ /[\n\r]/) {
            printf "render-config: %s contains a line break\n", name > "/dev/stderr"
            failed = 1
            exit 1
        }
        out = ""
        for (i = 1; i <= length(value); i++) {
            c = substr(value, i, 1)
            if (c == "\\" || c == "\"") out = out "\\"
            out = out c
        }
        return out
    }
    BEGIN {
        split("ALERT_WEBHOOK_URL ALERT_EMAIL_TO ALERT_EMAIL_FROM SMTP_SMARTHOST SMTP_USERNAME " \
              "SMTP_PASSWORD SMTP_REQUIRE_TLS SLACK_WEBHOOK_URL SLACK_CHANNEL " \
              "ALERTMANAGER_TEMPLATES", names, " ")
        for (i in names) allowed[names[i]] = 1
        keep["email"] = (email == "yes")
        keep["slack"] = (slack == "yes")
        skipping = ""
    }
    /^[ \t]*# >>> [a-z]+[ \t]*$/ { block = $3; if (!keep[block]) skipping = block; next }
    /^[ \t]*# <<< [a-z]+[ \t]*$/ { if (skipping == $3) skipping = ""; next }
    skipping != "" { next }
    {
        line = $0
        out = ""
        while (match(line, /\$\{[A-Z_][A-Z0-9_]*\}/)) {
            name = substr(line, RSTART + 2, RLENGTH - 3)
            if (!(name in allowed)) {
                printf "render-config: unknown variable ${%s} in template\n", name > "/dev/stderr"
                failed = 1
                exit 1
            }
            out = out substr(line, 1, RSTART - 1) quote(name, ENVIRON[name])
            line = substr(line, RSTART + RLENGTH)
        }
        print out line
    }
    END { if (failed) exit 1 }
' "$template" > "$output.tmp" || { rm -f "$output.tmp"; exit 1; }
mv "$output.tmp" "$output"

if [ "${1:-}" = "--" ]; then
    shift
    exec "$@"
fi
