"""What rebuilds itself: the assets made from a partition's cards (QR images, exports, badge sheets,
the Esse3 badge write-back) are requested again whenever the cards change in a run that did not
also rebuild them (say `esc_cards` materialised alone from the UI), through Dagster's declarative
automation (the ``exports_follow_cards`` sensor in etl.definitions). Dagster's ``eager()`` without its
"newly missing" half: a partition missing downstream is the job's to build, not the automation's
(with it, a deployment's first backfill requested every partition's exports a second time)."""

from __future__ import annotations

from dagster import AutomationCondition

FOLLOWS_CARDS = (
    AutomationCondition.any_deps_updated().since_last_handled()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("follows_cards")
