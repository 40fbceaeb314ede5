import pytest

from labotel.config import Settings, describe


def test_defaults_without_environment():
    settings = Settings.load({}, environ={})
    assert settings.admin_address == "127.0.0.1:6060"
    assert settings.race_detection is False
    assert settings.metrics_exporters() == ["prometheus"]
    assert settings.traces_exporters() == []


def test_keyword_beats_labotel_env_beats_otel_env():
    env = {"OTEL_SERVICE_NAME": "from-otel", "LABOTEL_SERVICE_NAME": "from-labotel"}
    assert Settings.load({}, environ={"OTEL_SERVICE_NAME": "from-otel"}).service_name == "from-otel"
    assert Settings.load({}, environ=env).service_name == "from-labotel"
    assert Settings.load({"service_name": "kw"}, environ=env).service_name == "kw"


def test_environment_values_are_parsed_by_type():
    env = {"LABOTEL_RACE_DETECTION": "yes", "LABOTEL_LEAK_WINDOW": "12.5",
           "LABOTEL_THREAD_LIMIT": "42", "LABOTEL_ADMIN_ADDRESS": ""}
    settings = Settings.load({}, environ=env)
    assert settings.race_detection is True
    assert settings.leak_window == 12.5
    assert settings.thread_limit == 42
    assert settings.admin_address is None  # empty disables the debug server


def test_otlp_endpoint_turns_on_push_export():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    settings = Settings.load({}, environ=env)
    assert settings.metrics_exporters() == ["prometheus", "otlp"]
    assert settings.traces_exporters() == ["otlp"]
    none = Settings.load({}, environ={**env, "OTEL_TRACES_EXPORTER": "none"})
    assert none.traces_exporters() == []


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="'race_detecton'"):
        Settings.load({"race_detecton": True}, environ={})


@pytest.mark.parametrize("options, env, named", [
    ({"thread_limit": "many"}, {}, "thread_limit"),
    ({"thread_limit": 1.5}, {}, "thread_limit"),
    ({"thread_limit": 0}, {}, "thread_limit"),
    ({"leak_window": "nan"}, {}, "leak_window"),
    ({}, {"LABOTEL_RACE_DETECTION": "maybe"}, "LABOTEL_RACE_DETECTION"),
    ({}, {"LABOTEL_LEAK_WINDOW": "soon"}, "LABOTEL_LEAK_WINDOW"),
    ({"metrics_exporter": "prometheus,zipkin"}, {}, "metrics_exporter"),
    ({}, {"OTEL_TRACES_EXPORTER": "jaeger"}, "traces_exporter"),
    ({"admin_address": "localhost"}, {}, "admin_address"),
    ({"admin_address": "127.0.0.1:99999"}, {}, "admin_address"),
    ({"admin_address": "127.0.0.1:³"}, {}, "admin_address"),  # isdigit() takes it
    ({"admin_address": "127.0.0.1:٣"}, {}, "admin_address"),  # int() reads it as 3
    ({"otlp_protocol": "udp"}, {}, "otlp_protocol"),
])
def test_malformed_values_raise_value_error_naming_the_option(options, env, named):
    with pytest.raises(ValueError, match=named):
        Settings.load(options, environ=env)


def test_every_option_is_documented():
    rows = describe()
    assert {row[0] for row in rows} >= {"LABOTEL_SERVICE_NAME", "LABOTEL_ADMIN_ADDRESS",
                                        "LABOTEL_RACE_DETECTION", "LABOTEL_MEMORY_LIMIT_BYTES"}
    assert all(doc for _, _, doc in rows)
