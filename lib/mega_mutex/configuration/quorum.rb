# frozen_string_literal: true

module MegaMutex
  # The :quorum backend's settings (a lease on a majority of independent
  # memcached servers, with fencing tokens). Placeholder until the store lands.
  class Configuration
    store_settings :quorum, client: :quorum_client

    private

    def quorum_client
      raise Error, "backend :quorum is not available yet"
    end
  end
end
