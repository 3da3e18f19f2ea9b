from quantum_trader.cli import app

app(prog_name="quantum-trader")
