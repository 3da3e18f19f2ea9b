"""Every Prometheus metric the platform exports (DESIGN.md section 8), defined once.

Services import what they update from here, so a dashboard or alert rule can be checked
against one list. Latency buckets span 100 µs to 10 s: trading paths live in the sub-ms range,
exchange round trips in the 10 ms - 1 s range.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SIGNALS_GENERATED = Counter("signals_generated", "Signals produced by a signal source",
                            ["symbol", "direction"], registry=REGISTRY)
MODEL_INFERENCE_SECONDS = Histogram("model_inference_seconds",
                                    "Time to compute features and run the model for one bar",
                                    buckets=LATENCY_BUCKETS, registry=REGISTRY)
MODEL_ACCURACY = Gauge("model_accuracy", "Online directional accuracy of scored signals (0-1)",
                       ["model_name"], registry=REGISTRY)
ORDERS_PLACED = Counter("orders_placed", "Orders accepted by the exchange", ["symbol", "side"],
                        registry=REGISTRY)
ORDER_EXECUTION_SECONDS = Histogram("order_execution_seconds",
                                    "From approved intent to the exchange's acknowledgement",
                                    buckets=LATENCY_BUCKETS, registry=REGISTRY)
RISK_REJECTIONS = Counter("risk_rejections", "Signals and intents refused by risk-safety",
                          ["reason"], registry=REGISTRY)
BAR_TO_ORDER_SECONDS = Histogram("bar_to_order_seconds",
                                 "From a bar's publication to the acceptance of the entry order "
                                 "it caused", buckets=LATENCY_BUCKETS, registry=REGISTRY)
BUS_CONSUMER_LAG = Gauge("bus_consumer_lag", "Entries not yet acknowledged by a consumer group",
                         ["stream", "group"], registry=REGISTRY)
DEADLETTER = Counter("deadletter", "Messages moved to the dead-letter stream", ["stream"],
                     registry=REGISTRY)
POSITIONS_OPEN = Gauge("positions_open", "Open positions", registry=REGISTRY)
POSITIONS_UNPROTECTED = Gauge("positions_unprotected",
                              "Open positions with no working protective stop on the venue for "
                              "longer than exchange.protection_grace_s", registry=REGISTRY)
BOOK_ADJUSTMENTS = Counter("book_adjustments",
                           "Reconciliations that found our positions or wallet different from "
                           "the venue's with every trade booked, and adopted the venue's",
                           ["kind"], registry=REGISTRY)
EQUITY_USD = Gauge("equity_usd", "Account equity in USD(T)", registry=REGISTRY)
DRAWDOWN_RATIO = Gauge("drawdown_ratio", "Drawdown from the equity peak (0-1)",
                       registry=REGISTRY)
TRADING_STATE = Gauge("trading_state", "0 ACTIVE, 1 REDUCING, 2 HALTED", registry=REGISTRY)
EXCHANGE_ERRORS = Counter("exchange_errors", "Errors talking to the exchange", ["kind"],
                          registry=REGISTRY)
BACKUP_LAST_SUCCESS = Gauge("backup_last_success_timestamp_seconds",
                            "Unix time of the last backup that completed and verified",
                            registry=REGISTRY)
HTTP_REQUESTS = Counter("http_requests", "HTTP requests served",
                        ["service", "method", "route", "status"], registry=REGISTRY)
HTTP_REQUEST_SECONDS = Histogram("http_request_seconds", "HTTP request latency",
                                 ["service", "route"], buckets=LATENCY_BUCKETS,
                                 registry=REGISTRY)
SERVICE_UP = Gauge("service_health_status", "Health per service: 0 OK, 1 DEGRADED, 2 DOWN",
                   ["service"], registry=REGISTRY)
DAILY_LOSS_RATIO = Gauge("daily_loss_ratio",
                         "Loss since the start of the UTC day, as a share of day-start equity "
                         "(0-1; 0 when the day is up)", registry=REGISTRY)
RISK_LIMIT_RATIO = Gauge("risk_limit_ratio",
                         "Configured risk limits as ratios, for alerts: daily_loss, max_drawdown",
                         ["limit"], registry=REGISTRY)
EXCHANGE_RATE_LIMIT_USED = Gauge("exchange_rate_limit_used_ratio",
                                 "Share of the exchange's request-weight limit used in the "
                                 "current window (0-1)", registry=REGISTRY)
MARKET_DATA_LAST_BAR = Gauge("market_data_last_bar_timestamp_seconds",
                             "Unix time (wall clock) at which the last closed bar was published",
                             ["symbol"], registry=REGISTRY)
MARKET_DATA_BAR_INTERVAL = Gauge("market_data_bar_interval_seconds",
                                 "Bar length in seconds, per symbol (staleness alerts)",
                                 ["symbol"], registry=REGISTRY)
NOTIFICATIONS = Counter("notifications",
                        "Operator notifications by channel and outcome "
                        "(queued, sent, failed, dropped)", ["channel", "outcome"],
                        registry=REGISTRY)
BUS_STREAM_LENGTH = Gauge("bus_stream_length",
                          "Entries retained in a bus stream, as its last append left it",
                          ["stream", "retention"], registry=REGISTRY)
BUS_STREAM_FILL_RATIO = Gauge("bus_stream_fill_ratio",
                              "Share of a bus stream's bound taken by entries it must keep "
                              "(0-1): the slowest group's lag on until_acked streams, where 1 "
                              "makes publishers wait, then fail (BusFull); the length on newest",
                              ["stream", "retention"], registry=REGISTRY)
BUS_GROUPS_RECREATED = Counter("bus_groups_recreated",
                               "Consumer groups found missing (e.g. Redis lost its data) and "
                               "created again; what they had pending was lost",
                               ["stream", "group"], registry=REGISTRY)
OUTBOX_PENDING = Gauge("outbox_pending",
                       "Committed messages not yet published from the outbox (capped at one "
                       "batch: the publisher reads it a batch at a time)", registry=REGISTRY)
OUTBOX_PUBLISHED = Counter("outbox_published",
                           "Outbox messages the bus acknowledged and the store marked done",
                           ["topic"], registry=REGISTRY)
