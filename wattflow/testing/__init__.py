"""Test support shipped with the package: container images and CI start these as stand-ins
for real servers (see each module)."""
