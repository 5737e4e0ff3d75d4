"""The console: web pages for marketers and sellers, served by the API process under ``/console``.

Server-rendered (Jinja templates, ``console/templates``), charts as SVG drawn on the server
(:mod:`console.charts`, pygal), a few lines of script (``console/static/console.js``) for the live
feeds (server-sent events) and the parts loaded on click. Every number comes from the function the
API's JSON route calls, so the console and the API never disagree.

- :mod:`console.session`: sign-in with an API key -> a signed session cookie; scopes; CSRF.
- :mod:`console.pages`: rendering, navigation, how refusals and unavailable data are shown.
- :mod:`console.format`: numbers, money and times for people (Babel).
- :mod:`console.routes`: sign-in/out, static files, every page module's router.
- :mod:`console.live`: the overview's live figures and the triggers feed.
- Pages: :mod:`console.overview`, :mod:`console.contacts`, :mod:`console.analytics` (funnel, customer
  value, personas and forecast), :mod:`console.accounts`, :mod:`console.admin` (webhooks, models).
"""
