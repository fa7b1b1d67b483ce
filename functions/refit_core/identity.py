"""Who is calling: the caller's AWS identity (STS GetCallerIdentity), as `refit approve`, `reject`, `trigger`,
`rollback` and `promote` record it, and the rule separation of duties compares two identities by.

GetCallerIdentity needs no permission and cannot be answered for someone else: the ARN is the identity AWS
authenticated the request's credentials as (an IAM user, an assumed role's session, a federated user, the root).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_ARN = re.compile(r"arn:[^:]+:(?:iam|sts)::(?P<account>\d{12}):(?P<resource>.+)")


@dataclass(frozen=True)
class CallerIdentity:
    arn: str
    account: str
    user_id: str

    @classmethod
    def of(cls, sts: Any) -> CallerIdentity:
        reply = sts.get_caller_identity()
        return cls(arn=reply["Arn"], account=reply["Account"], user_id=reply["UserId"])

    @property
    def session(self) -> str | None:
        """An assumed role's session name (what SSO and SAML set to the person), else None."""
        return session_of(self.arn)


def session_of(arn: str) -> str | None:
    match = _ARN.fullmatch(arn)
    if match is None or not match["resource"].startswith("assumed-role/"):
        return None
    return match["resource"].rsplit("/", 1)[-1]


def person_of(arn: str) -> tuple[str, str] | None:
    """(account, name) of a principal ARN: an IAM user's or federated user's name, an assumed role's session name,
    `root`; None for anything else (then only the whole ARN identifies it)."""
    match = _ARN.fullmatch(arn)
    if match is None:
        return None
    resource = match["resource"]
    if resource == "root":
        return match["account"], "root"
    kind, _, rest = resource.partition("/")
    if kind in ("user", "federated-user", "assumed-role") and rest:
        return match["account"], rest.rsplit("/", 1)[-1]
    return None


def same_person(first: str, second: str) -> bool:
    """Whether two principal ARNs are the same identity for separation of duties: the same ARN, or in the same
    account the same name — so `user/ana` and `assumed-role/<approver role>/ana` (the session named after her, as
    SSO names it) are one person. A session name is chosen by whoever assumes the role unless the role's trust
    policy or the identity provider sets it, so two different names prove nothing more than that."""
    if first == second:
        return True
    one, other = person_of(first), person_of(second)
    return one is not None and one == other
