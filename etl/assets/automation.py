"""What rebuilds itself: the assets made from a partition's cards (QR images, exports, badge sheets,
the Esse3 badge write-back) are requested again whenever the cards change, by any run, through
Dagster's declarative automation (the ``exports_follow_cards`` sensor in etl.definitions). A run of
the whole job already refreshes them: eager conditions then find nothing newer and request nothing."""

from __future__ import annotations

from dagster import AutomationCondition

FOLLOWS_CARDS = AutomationCondition.eager()
