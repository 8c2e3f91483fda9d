"""iot-monitor's live dashboard (Streamlit)."""
