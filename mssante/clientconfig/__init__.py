"""What a mail client needs to configure itself: the endpoints the listeners really are,
Thunderbird autoconfig and Microsoft autodiscover documents served over HTTPS, the user name a
delegate types, and the DNS records an operator publishes (RFC 6186 SRV, MX, DKIM, MTA-STS)."""
