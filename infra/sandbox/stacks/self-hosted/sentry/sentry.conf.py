# The SENTRY STAND-IN reads its settings from the environment (docker-compose.yml); this file is
# here because a self-hosted install has it, and a backup must carry it.
SENTRY_NODESTORE = "sentry_nodestore_s3.S3PassthroughDjangoNodeStorage"
