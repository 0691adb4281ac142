"""Access tokens (nubo.accounts.security) without HTTP: what the verifier accepts and refuses."""

from __future__ import annotations

import uuid

import jwt
import pytest

from nubo.accounts import security
from nubo.errors import Unauthorized
from nubo.settings import Settings


async def test_pyjwt_level_checks(settings: Settings) -> None:
    """The verifier itself, without HTTP: algorithms are pinned whatever the header says."""
    user, session = uuid.uuid4(), uuid.uuid4()
    token, ttl = security.encode_access_token(settings, user, session)
    claims = security.decode_access_token(settings, token)
    assert (claims.sub, claims.sid, claims.exp - claims.iat, ttl) == (user, session, 900, 900)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    forged = jwt.encode({"sub": str(user)}, settings.jwt_secret, algorithm="HS384")
    with pytest.raises(Unauthorized) as caught:
        security.decode_access_token(settings, forged)
    assert caught.value.code == "invalid_token"
