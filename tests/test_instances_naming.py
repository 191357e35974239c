"""Instance ids (`Test/2`): how they are spelled, checked, and kept in the local state directory."""
from __future__ import annotations

import os

import pytest

from servicefactory.errors import InvalidName
from servicefactory.registry.base import ServiceRecord, instance_id, split_instance
from servicefactory.registry.local import LocalRegistry, check_name


def test_an_instance_id_is_the_service_name_slash_a_number() -> None:
    assert instance_id("Test", 2) == "Test/2"
    assert instance_id("Test", None) == "Test"
    assert split_instance("Test/12") == ("Test", 12)
    assert split_instance("Test") == ("Test", None)


@pytest.mark.parametrize("bad", ["Test/0", "Test/01", "Test/x", "Test/", "Test/1/2", "Test/-1", "Test/1e3",
                                 "Test/\u0663", "/1", "Test@1", "../x/1"])
def test_malformed_instance_ids_are_usage_errors(bad: str) -> None:
    with pytest.raises(InvalidName):
        check_name(bad)


def test_the_record_carries_its_instance_and_its_service() -> None:
    record = ServiceRecord("Test/3", 42, instance=3)
    assert record.service == "Test" and record.instance == 3
    again = ServiceRecord.from_dict(record.to_dict())
    assert again == record and again.to_dict()["instance"] == 3
    assert ServiceRecord("Test", 1).instance is None and ServiceRecord("Test", 1).service == "Test"


def test_instances_keep_their_files_under_name_at_number(tmp_path) -> None:
    registry = LocalRegistry(tmp_path / "state")
    claims = [registry.claim(name) for name in ("Test/1", "Test/2", "Test", "Testing/1", "Other")]
    try:
        for claim in claims:
            registry.publish(claim, ServiceRecord(claim.name, os.getpid(), instance=split_instance(claim.name)[1]))
        entries = set(os.listdir(tmp_path / "state"))
        assert {"Test@1.pid", "Test@1.json", "Test@2.pid", "Test.pid"} <= entries
        assert registry.instances_of("Test") == ["Test", "Test/1", "Test/2"]
        assert registry.lookup("Test/2").instance == 2
        assert registry.is_held("Test/2")
        assert "Test/1" in registry.names() and "Testing/1" in registry.names()
    finally:
        for claim in claims:
            registry.release(claim)
    assert registry.instances_of("Test") == []
    assert not registry.is_held("Test/2")
