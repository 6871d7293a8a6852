#!/bin/bash
# Like self-hosted's sentry/entrypoint.sh, which ends in the Sentry image's /docker-entrypoint.sh:
# the SENTRY STAND-IN's binary takes the same verbs (`run web`, `cleanup --days N`, ...).
set -e
exec sentry "$@"
