"""The latest state of every channel (:mod:`.store`) and the events its
changes make, encoded once (:mod:`.events`). Pure: it imports only
:mod:`app.domain`."""
