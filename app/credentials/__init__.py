"""Credentials, the whole lifecycle: what is injected upstream for each caller (one resolver per
auth_type, resolvers.py), bindings (bindings.py), the stored values as the hot path reads them
(store.py), the flows that create them (flows.py), reconciliation with the grants and its
triggers (reconcile.py), and the sweeper's part (sweep.py)."""
from .answers import AuthRequired, CredentialUnavailable, SecretNotSet, SignInAgain, wants_url_elicitation
from .resolvers import DISCOVERABLE, endpoint_for, resolver, service_credential

__all__ = ["AuthRequired", "CredentialUnavailable", "DISCOVERABLE", "SecretNotSet", "SignInAgain", "endpoint_for", "resolver",
           "service_credential", "wants_url_elicitation"]
