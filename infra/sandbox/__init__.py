"""The local sandbox (a Docker host behind sshd, a Sentry-shaped stack, S3): see sandbox.py."""
