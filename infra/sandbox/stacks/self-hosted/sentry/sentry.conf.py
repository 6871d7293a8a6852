# The SENTRY STAND-IN reads its settings from the environment (docker-compose.yml), except the
# nodestore's read_through/delete_through below; the file is here because a self-hosted install
# has it (copied from getsentry/self-hosted sentry/sentry.conf.example.py @26.8.0, its nodestore
# block), and a backup must carry it.
SENTRY_NODESTORE = "sentry_nodestore_s3.S3PassthroughDjangoNodeStorage"
SENTRY_NODESTORE_OPTIONS = {
    "compression": True,
    "endpoint_url": "http://seaweedfs:8333",
    "bucket_path": "nodestore",
    "bucket_name": "nodestore",
    "region_name": "us-east-1",
    "aws_access_key_id": "sentry",
    "aws_secret_access_key": "sentry",
}
