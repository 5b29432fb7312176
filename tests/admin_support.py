"""What the admin tests share: one account, and a balancer that has it."""

from __future__ import annotations

from zope_lb import LoadBalancer
from zope_lb.passwd import hash_password

PASSWORD = "s3cret pass"
ADMIN = "/__zope_lb__"
#: Hashing is slow on purpose (scrypt): done once for the whole run.
USERS = f"admin:{hash_password(PASSWORD)}"


def admin_balancer(servers, **options) -> LoadBalancer:
    """A balancer over the first two ``servers`` (ids c0, c1) with the admin account,
    without health probes unless asked."""
    options.setdefault("health_interval", 0)
    return LoadBalancer([f"{b.address} id=c{i}" for i, b in enumerate(servers[:2])],
                        admin_users=USERS, **options)
