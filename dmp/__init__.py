"""The DMP store: patients identified by a qualified INS, their documents, rules and trace."""
