"""The staff and resident web console: server-rendered pages (Jinja2) over the API's own endpoints.

Each page's server side calls the API's endpoints in-process (`backend.py`) with the signed-in
person's own token, so the console applies exactly the rules, permissions and error messages of the
API and adds none of its own. `views.mount(app)` adds it to the API app."""
