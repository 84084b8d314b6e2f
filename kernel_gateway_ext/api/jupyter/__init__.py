"""The Jupyter kernel API that jupyter_server's --gateway-url (JupyterLab) speaks."""
