"""Configuration as a specification: one TOML file, a default for everything, every mistake named.

A mistake in the file raises :class:`ConfigError` whose message names the section and the key
(or the file, when the file itself cannot be read or parsed), never a bare Python error.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dynamo_core.config import BucketConfig, Config, from_mapping, load
from dynamo_core.errors import ConfigError, DynamoError
from dynamo_core.wire import DEFAULT_MAX_MESSAGE_BYTES

#: The example of SPEC.md, plus a bucket with its own quorum, [node] and [limits].
FULL_EXAMPLE = """\
[cluster]
n = 3
r = 2
w = 2
request_timeout = 1.5
gossip_interval = 0.5

[node]
capacity = 4

[storage]
engine = "diskcache"          # or "memory", or a plugin's name

[failure_detector]
plugin = "phi-accrual"        # or "timeout"

[partitioning]
strategy = "strategy-3"       # or "strategy-1", "strategy-2"

[buckets.carts]
resolver = "cart-union"       # a bucket may also set n, r, w

[buckets.scores]
n = 5
r = 3
w = 4
resolver = "max-score"

[plugins]
modules = ["my_company.dynamo_plugins", "other.plugin"]

[limits]
max_clock_entries = 20
max_siblings = 50
max_message_bytes = 1048576
max_pending_requests = 500
"""


def write(tmp_path: Path, content: str, name: str = "dynamo.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(content), encoding="utf-8")
    return path


def refuses(tmp_path: Path, content: str, *words: str) -> str:
    """Assert loading the TOML text raises ConfigError naming every word; return the message."""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, content))
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# ====================================================================== defaults


def test_config_error_is_a_dynamo_error():
    assert issubclass(ConfigError, DynamoError)


def test_no_file_means_every_default():
    config = load(None)
    assert config == Config()
    assert (config.n, config.r, config.w) == (3, 2, 2)
    assert config.storage["engine"] == "diskcache"
    assert config.failure_detector["plugin"] == "phi-accrual"
    assert isinstance(config.partitioning["strategy"], str)
    assert config.capacity == 1
    assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert config.request_timeout > 0 and config.gossip_interval > 0
    assert config.max_clock_entries >= 1 and config.max_siblings >= 1
    assert config.max_pending_requests >= 1
    assert config.buckets == {}
    assert config.plugin_modules == ()


def test_an_empty_file_means_every_default(tmp_path):
    assert load(write(tmp_path, "")) == Config()


def test_an_empty_mapping_means_every_default():
    assert from_mapping({}) == Config()


def test_a_bucket_not_in_the_file_uses_the_cluster_quorum_and_no_resolver():
    assert load(None).bucket("anything") == BucketConfig("anything", 3, 2, 2, None)


# ====================================================================== a full file


def test_the_full_example_loads(tmp_path):
    config = load(write(tmp_path, FULL_EXAMPLE))
    assert (config.n, config.r, config.w) == (3, 2, 2)
    assert config.request_timeout == 1.5
    assert config.gossip_interval == 0.5
    assert config.capacity == 4
    assert config.storage["engine"] == "diskcache"
    assert config.failure_detector["plugin"] == "phi-accrual"
    assert config.partitioning["strategy"] == "strategy-3"
    assert config.plugin_modules == ("my_company.dynamo_plugins", "other.plugin")
    assert config.max_clock_entries == 20
    assert config.max_siblings == 50
    assert config.max_message_bytes == 1048576
    assert config.max_pending_requests == 500
    assert set(config.buckets) == {"carts", "scores"}


def test_a_bucket_names_its_resolver(tmp_path):
    config = load(write(tmp_path, FULL_EXAMPLE))
    assert config.bucket("carts").resolver == "cart-union"
    assert config.bucket("scores").resolver == "max-score"


def test_a_bucket_may_set_its_own_quorum(tmp_path):
    config = load(write(tmp_path, FULL_EXAMPLE))
    assert config.bucket("scores") == BucketConfig("scores", 5, 3, 4, "max-score")


def test_a_bucket_without_its_own_quorum_inherits_the_clusters(tmp_path):
    config = load(write(tmp_path, """
        [cluster]
        n = 5
        r = 3
        w = 4
        [buckets.carts]
        resolver = "cart-union"
        [buckets.plain]
    """))
    assert config.bucket("carts") == BucketConfig("carts", 5, 3, 4, "cart-union")
    assert config.bucket("plain") == BucketConfig("plain", 5, 3, 4, None)


def test_a_bucket_setting_only_some_of_n_r_w_inherits_the_rest(tmp_path):
    config = load(write(tmp_path, """
        [cluster]
        n = 5
        r = 3
        w = 4
        [buckets.fast]
        w = 1
    """))
    assert config.bucket("fast") == BucketConfig("fast", 5, 3, 1, None)


def test_a_bucket_with_a_smaller_n_caps_the_inherited_r_and_w(tmp_path):
    config = load(write(tmp_path, """
        [cluster]
        n = 5
        r = 3
        w = 4
        [buckets.single]
        n = 1
    """))
    assert config.bucket("single") == BucketConfig("single", 1, 1, 1, None)


def test_plugin_tables_keep_the_defaults_they_do_not_override(tmp_path):
    config = load(write(tmp_path, """
        [storage]
        engine = "memory"
        path = "/var/lib/dynamo"
        [failure_detector]
        plugin = "timeout"
    """))
    assert config.storage == {"engine": "memory", "path": "/var/lib/dynamo"}
    assert config.failure_detector["plugin"] == "timeout"
    assert set(Config().failure_detector) <= set(config.failure_detector)
    assert config.partitioning == Config().partitioning


def test_the_path_may_be_text_or_a_path_object(tmp_path):
    path = write(tmp_path, FULL_EXAMPLE)
    assert load(str(path)) == load(path)


def test_seconds_may_be_written_as_integers(tmp_path):
    config = load(write(tmp_path, "[cluster]\nrequest_timeout = 3\n"))
    assert config.request_timeout == 3.0 and isinstance(config.request_timeout, float)


# ====================================================================== the file itself


def test_a_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load(missing)
    assert str(missing) in str(info.value)


def test_bad_toml_syntax_names_the_file(tmp_path):
    message = refuses(tmp_path, "[cluster\nn = 3\n", "not valid TOML")
    assert str(tmp_path / "dynamo.toml") in message


def test_a_file_that_is_not_utf8_is_refused_by_name(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[storage]\nengine = "m\xe9moire"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(path)
    assert str(path) in str(info.value)


def test_a_directory_instead_of_a_file_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read") as info:
        load(tmp_path)
    assert str(tmp_path) in str(info.value)


# ====================================================================== unknown names


def test_an_unknown_section_is_named(tmp_path):
    refuses(tmp_path, "[clustr]\nn = 3\n", "unknown", "clustr")


def test_a_typo_in_a_key_is_named_with_its_section(tmp_path):
    refuses(tmp_path, "[cluster]\nnn = 3\n", "[cluster]", "unknown", "nn")


@pytest.mark.parametrize("content, section, key", [
    ("[limits]\nmax_sibling = 5\n", "[limits]", "max_sibling"),
    ("[node]\ncapacty = 2\n", "[node]", "capacty"),
    ("[plugins]\nmodule = []\n", "[plugins]", "module"),
    ("[buckets.carts]\nresolve = 'cart-union'\n", "[buckets.carts]", "resolve"),
], ids=["limits", "node", "plugins", "bucket"])
def test_an_unknown_key_in_any_checked_section_is_named(tmp_path, content, section, key):
    refuses(tmp_path, content, section, "unknown", key)


@pytest.mark.parametrize("content, section", [
    ("cluster = 3\n", "[cluster]"),
    ("limits = 'none'\n", "[limits]"),
    ("storage = 'memory'\n", "[storage]"),
    ("buckets = ['carts']\n", "[buckets]"),
    ("[buckets]\ncarts = 'cart-union'\n", "[buckets.carts]"),
], ids=["cluster", "limits", "storage", "buckets", "one-bucket"])
def test_a_section_that_is_not_a_table_is_named(tmp_path, content, section):
    refuses(tmp_path, content, section, "must be a table")


# ====================================================================== quorum numbers


def test_r_greater_than_n_is_refused(tmp_path):
    refuses(tmp_path, "[cluster]\nn = 3\nr = 4\n", "[cluster]", "r=4", "n=3")


def test_w_greater_than_n_is_refused(tmp_path):
    refuses(tmp_path, "[cluster]\nn = 2\nw = 3\nr = 1\n", "[cluster]", "w=3", "n=2")


def test_a_bucket_with_r_greater_than_its_n_is_refused(tmp_path):
    refuses(tmp_path, "[buckets.carts]\nn = 2\nr = 3\n", "[buckets.carts]", "r=3", "n=2")


@pytest.mark.parametrize("key", ["n", "r", "w"])
def test_a_quorum_number_of_zero_is_refused(tmp_path, key):
    refuses(tmp_path, f"[cluster]\n{key} = 0\n", "[cluster]", f"{key} must be an integer",
            "got 0")


def test_w_zero_in_a_bucket_is_refused(tmp_path):
    refuses(tmp_path, "[buckets.carts]\nw = 0\n", "[buckets.carts]", "w must be an integer")


def test_n_beyond_the_replica_limit_is_refused(tmp_path):
    refuses(tmp_path, "[cluster]\nn = 1000\n", "[cluster]", "n must be an integer", "1000")


# ====================================================================== value types


@pytest.mark.parametrize("value, shown", [
    ('"3"', "'3'"), ("true", "True"), ("3.0", "3.0"), ("[3]", "[3]"),
], ids=["text", "bool", "float", "list"])
def test_n_of_the_wrong_type_is_refused(tmp_path, value, shown):
    refuses(tmp_path, f"[cluster]\nn = {value}\n", "[cluster]", "n must be an integer",
            f"got {shown}")


def test_a_bucket_n_of_the_wrong_type_is_refused(tmp_path):
    refuses(tmp_path, '[buckets.carts]\nn = "3"\n', "[buckets.carts]", "n must be an integer")


@pytest.mark.parametrize("content, section, key", [
    ('[cluster]\nrequest_timeout = "2s"\n', "[cluster]", "request_timeout"),
    ("[cluster]\nrequest_timeout = 0\n", "[cluster]", "request_timeout"),
    ("[cluster]\ngossip_interval = -1.0\n", "[cluster]", "gossip_interval"),
    ("[cluster]\ngossip_interval = nan\n", "[cluster]", "gossip_interval"),
    ("[cluster]\nrequest_timeout = inf\n", "[cluster]", "request_timeout"),
    ("[cluster]\nrequest_timeout = true\n", "[cluster]", "request_timeout"),
], ids=["text", "zero", "negative", "nan", "infinite", "bool"])
def test_a_bad_number_of_seconds_is_refused(tmp_path, content, section, key):
    refuses(tmp_path, content, section, key, "number of seconds")


@pytest.mark.parametrize("content, section, key", [
    ("[limits]\nmax_siblings = 0\n", "[limits]", "max_siblings"),
    ("[limits]\nmax_clock_entries = '10'\n", "[limits]", "max_clock_entries"),
    ("[limits]\nmax_message_bytes = 10\n", "[limits]", "max_message_bytes"),
    ("[limits]\nmax_pending_requests = -5\n", "[limits]", "max_pending_requests"),
    ("[node]\ncapacity = 0\n", "[node]", "capacity"),
    ("[node]\ncapacity = 2.5\n", "[node]", "capacity"),
], ids=["siblings-zero", "clock-text", "message-tiny", "pending-negative", "capacity-zero",
        "capacity-float"])
def test_a_bad_limit_or_capacity_is_refused(tmp_path, content, section, key):
    refuses(tmp_path, content, section, key, "must be an integer")


def test_node_advertise_is_the_address_peers_and_clients_are_told(tmp_path):
    assert load(None).advertise is None
    config = load(write(tmp_path, '[node]\nadvertise = "tcp://db1.example:7609"\n'))
    assert config.advertise == "tcp://db1.example:7609"


@pytest.mark.parametrize("value, words", [
    ("7609", ["must be an address"]),
    ('"10.0.0.5:7609"', ["start with tcp://"]),
    ('"tcp://10.0.0.5"', ["no :PORT"]),
], ids=["number", "no-scheme", "no-port"])
def test_a_bad_node_advertise_is_refused(tmp_path, value, words):
    refuses(tmp_path, f"[node]\nadvertise = {value}\n", "[node]", "advertise", *words)


@pytest.mark.parametrize("value, expected", [
    ('"127.0.0.1:9101"', ("127.0.0.1", 9101)),
    ('"0.0.0.0:9101"', ("0.0.0.0", 9101)),
    ('"[::1]:9101"', ("::1", 9101)),
    ('"metrics.example:80"', ("metrics.example", 80)),
], ids=["loopback", "every-interface", "ipv6", "name"])
def test_metrics_listen_is_where_the_node_serves_prometheus_metrics(tmp_path, value, expected):
    assert load(None).metrics_listen is None
    assert load(write(tmp_path, "[metrics]\n")).metrics_listen is None
    assert load(write(tmp_path, f"[metrics]\nlisten = {value}\n")).metrics_listen == expected


@pytest.mark.parametrize("content, words", [
    ("[metrics]\nlisten = 9101\n", ['must be "HOST:PORT" (text)', "got 9101"]),
    ('[metrics]\nlisten = "9101"\n', ["'9101' is not HOST:PORT", "no :PORT"]),
    ('[metrics]\nlisten = "127.0.0.1:0"\n', ["port must be a number from 1 to 65535"]),
    ('[metrics]\nlisten = "127.0.0.1:70000"\n', ["port must be a number from 1 to 65535"]),
    ('[metrics]\nlisten = "127.0.0.1:http"\n', ["port must be a number from 1 to 65535"]),
    ('[metrics]\nlisten = "::1:9101"\n', ["IPv6 address goes in brackets"]),
    ('[metrics]\nlisten = ":9101"\n', ["names no host", '"0.0.0.0:PORT"']),
    ("[metrics]\nport = 9101\n", ["unknown setting(s) port", "known: listen"]),
    ("metrics = '127.0.0.1:9101'\n", ["[metrics] must be a table"]),
], ids=["number", "no-port", "port-zero", "port-too-big", "port-name", "bare-ipv6", "no-host",
        "unknown-key", "not-a-table"])
def test_a_bad_metrics_listen_is_refused_with_what_is_wrong(tmp_path, content, words):
    refuses(tmp_path, content, "[metrics]", *words)


@pytest.mark.parametrize("value", ['"my.plugins"', "[1, 2]", '["ok", 3]', '[""]', "true"],
                         ids=["text", "ints", "mixed", "empty-name", "bool"])
def test_plugin_modules_must_be_a_list_of_import_paths(tmp_path, value):
    refuses(tmp_path, f"[plugins]\nmodules = {value}\n", "[plugins]", "modules", "list")


@pytest.mark.parametrize("value", ["3", "true", '["cart-union"]', '""'],
                         ids=["int", "bool", "list", "empty"])
def test_a_bucket_resolver_must_be_text(tmp_path, value):
    refuses(tmp_path, f"[buckets.carts]\nresolver = {value}\n", "[buckets.carts]", "resolver",
            "text")


# ================================================================== the same rules without a file


def test_from_mapping_applies_the_same_rules():
    with pytest.raises(ConfigError, match=r"\[cluster\].*nn"):
        from_mapping({"cluster": {"nn": 3}})
    config = from_mapping({"cluster": {"n": 4, "r": 3, "w": 3},
                           "buckets": {"carts": {"resolver": "cart-union"}}})
    assert config.bucket("carts") == BucketConfig("carts", 4, 3, 3, "cart-union")
