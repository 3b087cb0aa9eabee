"""Fixtures the intake channel tests share."""

from __future__ import annotations

import pytest

from shared.auth import issue_token


@pytest.fixture
async def as_dispatch_desk(api, redis):
    """Reading tickets needs a token once the router's department access is in: read as the dispatch desk.
    (Submitting through a channel needs none: residents and WeChat have no tokens.)"""
    api.headers["Authorization"] = f"Bearer {await issue_token(redis, 'admin')}"
    return api
