print("p2pmetrics-example")
