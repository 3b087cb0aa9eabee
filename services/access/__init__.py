"""Staff access: the dispatch desk issues, lists and revokes the API's bearer tokens (views.py);
the rules are shared.access, the store shared.auth."""
