"""Exports follow changes (issue 13): when a partition's cards change, by whatever run, Dagster's
automation requests that partition's QR images, exports, badge sheets and badge write-back; nothing
else, and nothing when the whole job has just refreshed them."""

from __future__ import annotations

from pathlib import Path

from dagster import AssetMaterialization, DagsterInstance, evaluate_automation_conditions

from etl.definitions import build_definitions
from tests.fixtures.world import demo_settings

P = "2025|unife"
FOLLOWERS = {"qr_images", "export_files", "badge_sheets", "esse3_badge_write_back"}
ORDER = ["careers", "esi_assignments", "badges", "esc_cards", *sorted(FOLLOWERS)]


def materialized(instance: DagsterInstance, *keys: str, partition: str = P) -> None:
    for key in keys:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=key, partition=partition))


def requested(result) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    return {
        key.to_user_string(): set(result.get_requested_partitions(key))
        for key in (r.key for r in result.results)
        if result.get_num_requested(key)
    }


def test_a_partitions_card_changes_bring_its_exports_along(tmp_path: Path) -> None:
    defs = build_definitions(demo_settings(tmp_path, f"sqlite:///{tmp_path / 's.db'}"))
    with DagsterInstance.ephemeral() as instance:
        materialized(instance, *ORDER)  # the whole job ran: everything is as new as the cards
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        assert requested(first) == {}
        materialized(instance, "esc_cards")  # a run of esc_cards alone (the UI, a repair)
        second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert requested(second) == {key: {P} for key in FOLLOWERS}
        materialized(instance, *sorted(FOLLOWERS))  # the runs it requested
        third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert requested(third) == {}
