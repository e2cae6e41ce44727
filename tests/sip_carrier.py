"""A carrier for outbound calls: moved to ``infra.sipp`` (``Carrier``, ``uas_scenario``), where the rehearsal
(``localenv.rehearse``) uses it too; re-exported here for the tests that import it from this module."""

from infra.sipp import Carrier, uas_scenario

__all__ = ["Carrier", "uas_scenario"]
