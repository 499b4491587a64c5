"""The MCP server: tools over the knowledge base."""
