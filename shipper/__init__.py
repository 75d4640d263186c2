"""shipper: a log-shipping sidecar for Airflow task pods that pushes to Loki."""

__version__ = "0.1.0"
