# frozen_string_literal: true

module MegaMutex
  # The :mysql backend's settings (MariaDB/MySQL named locks, GET_LOCK).
  # Placeholder until the store lands.
  class Configuration
    store_settings :mysql, client: :mysql_client, session: true

    private

    def mysql_client
      raise Error, "backend :mysql is not available yet"
    end
  end
end
