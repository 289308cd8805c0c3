"""The local stack's pure decisions: KRaft cluster ids, bootstrap lists, topic specs, restart backoff."""

from __future__ import annotations

import uuid
from datetime import date

import pytest

from contracts.topics import DLQ_MAX_MESSAGE_BYTES, all_topics
from deploy import localstack
from deploy.supervisor import backoff_delays, describe_exit
from services.runtime.settings import Settings, bootstrap_list
from services.runtime.topics_admin import wanted_topics


def test_cluster_ids_never_start_with_a_dash() -> None:
    # One urlsafe-base64 id in 64 starts with "-", which `kafka-storage format -t` reads as an option:
    # among 10,000 ids the old generator gave about 156 such; the new one must give none.
    ids = [localstack.new_cluster_id() for _ in range(10_000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)


def test_a_uuid_whose_id_would_start_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dash_first = uuid.UUID(bytes=b"\xf8" + bytes(15))  # top 6 bits 62: "-" in the urlsafe alphabet
    fine = uuid.UUID(bytes=b"\x10" + bytes(15))
    drawn = iter([dash_first, dash_first, fine])
    monkeypatch.setattr(localstack.uuid, "uuid4", lambda: next(drawn))
    assert localstack.new_cluster_id() == "EAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize(("raw", "expected"), [
    ("127.0.0.1:31092", ["127.0.0.1:31092"]),
    ("127.0.0.1:1,127.0.0.1:3, 127.0.0.1:5", ["127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:5"]),
])
def test_the_bootstrap_reaches_the_clients_as_a_list_of_hosts(raw: str, expected: list[str]) -> None:
    assert bootstrap_list(raw) == expected
    assert Settings(kafka_bootstrap=raw).bootstrap_list() == expected


def test_an_empty_host_in_the_bootstrap_is_refused() -> None:
    with pytest.raises(ValueError, match="empty host"):
        bootstrap_list("127.0.0.1:1,,127.0.0.1:3")


def test_the_services_broker_gets_every_host_and_never_creates_topics() -> None:
    from services.runtime.broker import create_broker

    broker = create_broker(Settings(kafka_bootstrap="127.0.0.1:1,127.0.0.1:3"), client_id="t")
    assert broker._connection_kwargs["bootstrap_servers"] == ["127.0.0.1:1", "127.0.0.1:3"]
    assert broker.config.allow_auto_create_topics is False


@pytest.mark.parametrize(("brokers", "rf", "min_isr"), [(1, 1, "1"), (2, 2, "1"), (3, 3, "2"), (5, 3, "2")])
def test_topic_specs_follow_the_registry_and_the_cluster_size(brokers: int, rf: int, min_isr: str) -> None:
    specs = {s.name: s for s in wanted_topics(partitions=6, brokers=brokers)}
    assert len(specs) == 2 * len(all_topics())
    for topic in all_topics():
        main, dlq = specs[topic.name], specs[topic.dlq]
        assert (main.partitions, main.replication_factor) == (6, rf)
        assert main.configs == {"min.insync.replicas": min_isr, "retention.ms": str(topic.retention_ms),
                                "max.message.bytes": str(topic.max_message_bytes)}
        assert dlq.configs["max.message.bytes"] == str(DLQ_MAX_MESSAGE_BYTES)
        assert (dlq.partitions, dlq.replication_factor, dlq.configs["min.insync.replicas"]) == (6, rf, min_isr)
    assert specs["flows.ts-submission-requested"].configs["retention.ms"] == str(3600 * 1000)


def test_partitions_come_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_TOPIC_PARTITIONS", "12")
    assert Settings().topic_partitions == 12
    monkeypatch.delenv("FLOWS_TOPIC_PARTITIONS")
    assert Settings().topic_partitions == 6
    with pytest.raises(ValueError):
        wanted_topics(partitions=0, brokers=1)


def test_the_watched_entities_come_from_the_setting_each_with_its_own_go_live(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_DEADLINES_ENTI", " 201 , 202:2027-02-01")
    assert Settings().deadlines_enti == {"201": None, "202": date(2027, 2, 1)}
    monkeypatch.delenv("FLOWS_DEADLINES_ENTI")
    assert Settings().deadlines_enti is None  # every entity


@pytest.mark.parametrize(("raw", "said"), [
    ("201,299", "299 is not an entity of the catalogue"),
    ("201,,202", "an empty entity"),
    ("", "an empty entity"),
    ("201,201:2027-01-01", "entity 201 is given twice"),
    ("201:01/02/2027", "the go-live day of entity 201, '01/02/2027', is not a date YYYY-MM-DD"),
])
def test_a_wrong_list_of_watched_entities_is_refused_naming_the_item(monkeypatch: pytest.MonkeyPatch, raw: str,
                                                                     said: str) -> None:
    monkeypatch.setenv("FLOWS_DEADLINES_ENTI", raw)
    with pytest.raises(ValueError, match="deadlines_enti") as refused:
        Settings()
    assert said in str(refused.value)


def test_restart_backoff_doubles_from_one_second_and_is_capped_at_thirty() -> None:
    assert backoff_delays() == [1, 2, 4, 8, 16, 30]
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "exit 3"


def test_the_ts_simulator_port_follows_the_kafka_port_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWS_TS_SIM_PORT", raising=False)
    assert localstack.ts_sim_port(31092) == 31100
    assert localstack.ts_sim_port(19092) != localstack.ts_sim_port(29092)
    monkeypatch.setenv("FLOWS_TS_SIM_PORT", "31555")
    assert localstack.ts_sim_port(31092) == 31555
