"""The dashboard (`attractor dashboard`): `app` serves pages and a JSON API over what `source`
reads, with the page models in `views`; templates and assets ship in the package."""
